"""The virtual robot: a physics arm behind emulated servos on a pseudo-terminal, as a real arm's USB port.

    bus.py       the servo side of the bus: packets in, replies out at wire timing, faults injected
    servo.py     one virtual servo's control-table memory (the family's firmware answers for it:
                 robot_io/<family>/virtual_servo.py)
    server.py    serves a physics arm on a pty, camera frames, scene resets, scoring (`reverie sim serve-bus`)
    frames.py    camera frames shared through memory-mapped files: writer (server) and camera (client)
    scene.py     the client side of scene resets and status (standard library only: the runtime uses it)
    launcher.py  VirtualArm: start and stop a server as a child process

It imports no simulator: the physics and the task scores are handed to the server (sim/serve_bus.py
hands it the MuJoCo arm). From robot_io it uses only the servo-family interface and the camera frame
type, never the client bus, the robot or its config (tests/test_layering.py checks it).
"""
