"""Bad input to `reverie deploy`: refused with a clear error before the arm moves, or a safe stop when
it happens while running."""

import json
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from reverie.errors import BundleError, ConfigError, HardwareError

sys.path.insert(0, str(Path(__file__).parent))
import export_setup  # noqa: E402


@pytest.fixture
def bundle(quick, tmp_path) -> Path:
    """A private copy of the quick bundle, free to damage."""
    src = quick
    return Path(shutil.copytree(src, tmp_path / "bundle"))


def deploy(*args: str):
    from reverie.runtime.deploy import main

    return main(list(args) + ["stdin=false"])


def sim(bundle: Path, *extra: str):
    return deploy(f"bundle={bundle}", "robot=sim", "instruction=touch the red cube", "task=touch", *extra)


def test_missing_file_is_refused(bundle):
    (bundle / "text_encoder.onnx").unlink()
    with pytest.raises(BundleError, match="text_encoder.onnx is missing"):
        sim(bundle)


def test_wrong_checksum_is_refused(bundle):
    data = bytearray((bundle / "policy.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    (bundle / "policy.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="fails its checksum"):
        sim(bundle)


def test_onnx_file_that_does_not_load_is_refused(bundle):
    from reverie.runtime import manifest

    (bundle / "policy.onnx").write_bytes(b"not an onnx graph at all")
    content = {k: v for k, v in manifest.read(bundle).items() if k not in ("format", "files")}
    manifest.write(bundle, content)  # checksums now agree: only the loader can notice
    with pytest.raises(BundleError, match="does not load in onnxruntime"):
        sim(bundle)


def edit_manifest(bundle: Path, change, seal: bool = True) -> None:
    """Change manifest.json in place; `seal` rewrites its digest too, as a tamperer could, so only the
    checks behind the digest can notice."""
    from reverie.runtime import manifest

    path = bundle / "manifest.json"
    m = json.loads(path.read_text())
    change(m)
    path.write_text(json.dumps(m))
    if seal:
        manifest.seal(bundle)


def test_hand_edited_manifest_fails_its_digest_before_it_is_read(bundle):
    edit_manifest(bundle, lambda m: m["robot"]["config"]["joints"][0].update(limits=[-3.0, 3.0]), seal=False)
    with pytest.raises(BundleError, match=r"manifest.json fails its checksum .* edited or damaged after export"):
        sim(bundle)
    edit_manifest(bundle, lambda m: None)  # sealed again: accepted by the digest check
    (bundle / "manifest.json.sha256").unlink()
    with pytest.raises(BundleError, match=r"manifest.json.sha256 is missing.*re-run `reverie export`"):
        sim(bundle)


def test_manifest_specs_that_disagree_with_the_graph_are_refused(bundle):
    edit_manifest(bundle, lambda m: m["observation"]["image"].update(shape=[32, 32, 3]))
    with pytest.raises(BundleError, match="input 'image' has shape"):
        sim(bundle)


def test_sim_scaled_bundle_is_refused_on_a_servo_arm(bundle, tmp_path):
    edit_manifest(bundle, lambda m: m.update(robot={"kind": "sim", "name": "sim/so101", "action_scale": [0.15] * 6,
                                                    "action_mode": "delta"}))
    with pytest.raises(BundleError, match="scaled for the simulator"):
        deploy(f"bundle={bundle}", "robot=virtual", f"link={tmp_path / 'arm'}", "instruction=touch the red cube")


def test_port_that_does_not_exist_is_refused(bundle):
    with pytest.raises(HardwareError, match="port /dev/ttyREVERIE_NONE does not exist"):
        deploy(f"bundle={bundle}", "robot=feetech", "port=/dev/ttyREVERIE_NONE", "camera=0",
               "instruction=touch the red cube")


@pytest.mark.parametrize("text, match", [("   ", "instruction is empty"), ("go " * 400, "at most 512")])
def test_empty_or_absurdly_long_instruction_is_refused(bundle, text, match):
    with pytest.raises(ConfigError, match=match):
        deploy(f"bundle={bundle}", "robot=sim", f"instruction={text}")


def test_camera_resolution_mismatch_is_refused_before_torque(bundle, tmp_path):
    from reverie.robot_io.virtual.launcher import VirtualArm

    link = tmp_path / "arm"
    with VirtualArm("feetech", link=link, image_size=[32, 32]):
        with pytest.raises(BundleError, match=r"gives \(32, 32, 3\) images, the policy expects \(64, 64, 3\)"):
            deploy(f"bundle={bundle}", "robot=virtual", f"link={link}", "instruction=touch the red cube")
        export_setup.assert_torque_never_enabled(link)  # refused before connect()


def test_bad_instructions_while_running_are_refused_and_the_loop_goes_on(bundle, capsys):
    import re

    from reverie.runtime.instructions import MAX_BYTES, send
    from reverie.runtime.deploy import deploy as run, parse

    args = parse([f"bundle={bundle}", "robot=sim", "instruction=touch the red cube", "task=touch",
                  "steps=60", "socket=0", "token=secret-token-1", "stdin=false"])
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(out=run(args)))
    thread.start()
    seen = ""
    while not (m := re.search(r"127.0.0.1:(\d+) token", seen)) and thread.is_alive():
        seen += capsys.readouterr().out
        time.sleep(0.02)
    port = int(m.group(1))
    replies = [send(port, "secret-token-1", ""), send(port, "secret-token-1", "x" * 600),
               send(port, "secret-token-1", "a" * (MAX_BYTES + 10)), send(port, "wrong-token", "lift the red cube"),
               send(port, "secret-token-1", "lift the red cube")]
    thread.join(timeout=60)
    assert replies[0].startswith("error: the instruction is empty")
    assert replies[1].startswith("error: the instruction has 600 characters")
    assert replies[2].startswith("error: empty request or longer than")
    assert replies[3] == "error: wrong token"
    assert replies[4] == "ok 2"
    summary = result["out"][0]
    assert summary["steps"] == 60 and summary["instructions"] == 2  # the loop never stopped


def test_non_finite_action_while_running_ends_in_a_safe_stop(bundle, monkeypatch):
    from reverie.runtime.bundle import Bundle

    act, calls = Bundle.act, {"n": 0}

    def failing(self, *a):
        calls["n"] += 1
        out = act(self, *a)
        return out * np.nan if calls["n"] == 5 else out

    monkeypatch.setattr(Bundle, "act", failing)
    with pytest.raises(HardwareError, match=r"(?s)non-finite action.*step 5.*safe stop"):
        sim(bundle, "steps=30")


def test_a_run_ended_by_a_fault_still_writes_its_report(bundle, monkeypatch, tmp_path):
    """report= holds the episodes that ran and the one the fault cut short: its steps, the fault and how
    the arm was left."""
    from reverie.runtime.bundle import Bundle
    from reverie.runtime.deploy import main

    act, calls = Bundle.act, {"n": 0}

    def failing(self, *a):
        calls["n"] += 1
        out = act(self, *a)
        return out * np.nan if calls["n"] == 8 else out  # episode 2, step 3

    monkeypatch.setattr(Bundle, "act", failing)
    report = tmp_path / "report.json"
    with pytest.raises(HardwareError, match="non-finite action"):
        main([f"bundle={bundle}", "robot=sim", "instruction=touch the red cube", "task=touch", "steps=5",
              "episodes=3", "stdin=false", f"report={report}"])
    done, cut = json.loads(report.read_text())
    assert done["steps"] == 5 and "fault" not in done
    assert cut["steps"] == 2 and "non-finite action" in cut["fault"] and cut["stopped"].startswith("sim:")


def widen(field: str, scale: float, joints=("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll")):
    """A manifest change that multiplies one limit of the named joints, in the arm config the runtime
    used to rebuild the arm from and in the summary fields beside it."""
    def change(m):
        robot = m["robot"]
        for i, j in enumerate(robot["config"]["joints"]):
            if j["name"] not in joints:
                continue
            if field == "limits":
                j["limits"] = [v * scale for v in j["limits"]]
                robot["joint_limits"]["lower"][i] *= scale
                robot["joint_limits"]["upper"][i] *= scale
            else:  # the config may give it per joint or in joint_defaults: set it per joint
                robot[field][i] *= scale
                j[field] = robot[field][i]
    return change


@pytest.mark.parametrize("change, match", [
    (widen("limits", 1.8), r"joint 'shoulder_pan' lower limit -3.42 in the bundle, -1.9 in the robot's arm config "
                           r"so101_virtual \(and 9 more\);"),
    (widen("max_step", 40), r"joint 'shoulder_pan' max_step 10 in the bundle, 0.25 in the robot's arm config"),
    (widen("max_velocity", 50), r"joint 'shoulder_pan' max_velocity 100 in the bundle, 2 in the robot's arm config"),
    (widen("limits", 1.0625, joints=("elbow_flex",)), r"joint 'elbow_flex' lower limit -1.7 in the bundle, -1.6"),
])
def test_bundle_with_wider_limits_than_the_robot_is_refused_before_torque(bundle, tmp_path, change, match):
    """The issue's tampering (limits x1.8, max_step x40, max_velocity x50, digest rewritten too): the
    robot's own config wins, the error names joint, field, both values and the fix, and no servo was
    ever powered."""
    from reverie.robot_io.virtual.launcher import VirtualArm

    edit_manifest(bundle, change)
    link = tmp_path / "arm"
    with VirtualArm("feetech", link=link):
        with pytest.raises(BundleError, match=match + r".*can only narrow the robot's limits: re-export it with "
                                                      r"arm=so101_virtual"):
            deploy(f"bundle={bundle}", "robot=virtual", f"link={link}", "instruction=touch the red cube")
        export_setup.assert_torque_never_enabled(link)  # refused before connect()


def test_narrower_bundle_limits_apply_and_the_robot_keeps_its_own_hardware(bundle, tmp_path):
    from reverie.runtime import manifest
    from reverie.runtime.targets import deploy_arm
    from reverie.robot_io.config import load_arm
    from reverie.robot_io.safety import SafetyFilter

    edit_manifest(bundle, widen("max_step", 0.5))
    edit_manifest(bundle, widen("limits", 0.5, joints=("shoulder_pan",)))
    m = manifest.read(bundle)
    m["robot"]["config"]["joints"][0]["zero_ticks"] = 100  # hardware facts come from the robot, not the bundle
    arm = deploy_arm(m, "virtual", {})
    own = load_arm("so101_virtual")
    assert arm.joints[0].limits == (-0.95, 0.95) and arm.joints[1].limits == own.joints[1].limits
    safety = SafetyFilter.from_arm(arm)
    np.testing.assert_allclose(safety.max_step[:5], own.vector("max_step")[:5] / 2)
    assert [j.zero_ticks for j in arm.joints] == [j.zero_ticks for j in own.joints]
    assert arm.safe_pose == own.safe_pose and arm.control_hz == m["control_hz"]
    # ...and they really run: a short deployment on the virtual robot.
    from reverie.robot_io.virtual.launcher import VirtualArm

    link = tmp_path / "arm"
    with VirtualArm("feetech", link=link):
        deploy(f"bundle={bundle}", "robot=virtual", f"link={link}", "instruction=touch the red cube", "steps=5")


def test_the_robots_own_arm_config_is_authoritative(bundle, tmp_path):
    """arm=YAML on the robot's computer: its narrower limits refuse a bundle exported with the shipped
    ones; its wider limits accept it (the bundle then narrows them)."""
    from reverie.runtime import manifest
    from reverie.runtime.targets import deploy_arm

    m = manifest.read(bundle)
    careful = tmp_path / "careful.yaml"
    careful.write_text("defaults: [so101_virtual]\nname: careful\njoints:\n"
                       + "".join(f"  - {{name: {n}, id: {i + 1}, limits: [-1.2, 1.2]}}\n" for i, n in
                                 enumerate(["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll"]))
                       + "  - {name: gripper, id: 6, gripper: true, limits: [0.0, 1.0], range_ticks: [1937, 3189],"
                         " max_step: 0.5}\n"
                       + "safe_pose: [0, -1.2, 1.2, 0.8, 0, 0]\n")
    with pytest.raises(BundleError, match=r"joint 'shoulder_pan' lower limit -1.9 in the bundle, -1.2 in the "
                                          r"robot's arm config careful \(.*careful.yaml\) \(and 9 more\)"):
        deploy_arm(m, "virtual", {"arm": str(careful)})
    roomy = tmp_path / "roomy.yaml"
    roomy.write_text("defaults: [so101_virtual]\nname: roomy\njoint_defaults: {model: sts3215, max_velocity: 4.0, "
                     "max_step: 0.5, action_scale: 0.05}\n")
    arm = deploy_arm(m, "virtual", {"arm": str(roomy)})
    assert arm.vector("max_velocity")[:5].tolist() == [2.0] * 5  # the bundle's, inside the robot's 4.0
    with pytest.raises(ConfigError, match="arm config 'no_such_arm' not found"):
        deploy_arm(m, "virtual", {"arm": "no_such_arm"})
