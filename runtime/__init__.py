"""The torch-free deploy runtime: load an ONNX bundle, read instructions, drive a robot (or the sim).

What the robot's computer installs (`pip install reverie[robot]`): numpy, onnxruntime, tokenizers,
pyserial, pyyaml. Nothing here imports torch, world_model, policy, sim or export; tests/test_layering.py
checks it on the import graph. The exporter (reverie.export) writes what this package reads.
"""
