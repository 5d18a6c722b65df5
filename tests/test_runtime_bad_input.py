"""Bad input to `reverie deploy`: refused with a clear error before the arm moves, or a safe stop when
it happens while running."""

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from reverie.errors import BundleError, ConfigError, HardwareError


@pytest.fixture
def bundle(quick, tmp_path) -> Path:
    """A private copy of the quick bundle, free to damage."""
    src = quick
    return Path(shutil.copytree(src, tmp_path / "bundle"))


def deploy(*args: str):
    from reverie.export.runtime import main

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
    from reverie.export import manifest

    (bundle / "policy.onnx").write_bytes(b"not an onnx graph at all")
    content = {k: v for k, v in manifest.read(bundle).items() if k not in ("format", "files")}
    manifest.write(bundle, content)  # checksums now agree: only the loader can notice
    with pytest.raises(BundleError, match="does not load in onnxruntime"):
        sim(bundle)


def test_manifest_specs_that_disagree_with_the_graph_are_refused(bundle):
    path = bundle / "manifest.json"
    m = json.loads(path.read_text())
    m["observation"]["image"]["shape"] = [32, 32, 3]
    path.write_text(json.dumps(m))
    with pytest.raises(BundleError, match="input 'image' has shape"):
        sim(bundle)


def test_sim_scaled_bundle_is_refused_on_a_servo_arm(bundle, tmp_path):
    path = bundle / "manifest.json"
    m = json.loads(path.read_text())
    m["robot"] = {"kind": "sim", "name": "sim/so101", "action_scale": [0.15] * 6, "action_mode": "delta"}
    path.write_text(json.dumps(m))
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
    from reverie.robot_io.bus import ServoBus
    from reverie.robot_io.virtual_robot import VirtualArm

    link = tmp_path / "arm"
    with VirtualArm("feetech", link=link, image_size=[32, 32]):
        with pytest.raises(BundleError, match=r"gives \(32, 32, 3\) images, the policy expects \(64, 64, 3\)"):
            deploy(f"bundle={bundle}", "robot=virtual", f"link={link}", "instruction=touch the red cube")
        bus = ServoBus(str(link), "feetech", timeout_s=0.1)
        bus.connect()
        try:  # refused before connect(): torque was never enabled
            assert not any(bus.read(i, "Torque_Enable") for i in range(1, 7))
        finally:
            bus.close()


def test_bad_instructions_while_running_are_refused_and_the_loop_goes_on(bundle, capsys):
    import re

    from reverie.export.instructions import MAX_BYTES, send
    from reverie.export.runtime import deploy as run, parse

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
    from reverie.export.bundle import Bundle

    act, calls = Bundle.act, {"n": 0}

    def failing(self, *a):
        calls["n"] += 1
        out = act(self, *a)
        return out * np.nan if calls["n"] == 5 else out

    monkeypatch.setattr(Bundle, "act", failing)
    with pytest.raises(HardwareError, match=r"(?s)non-finite action.*step 5.*safe stop"):
        sim(bundle, "steps=30")
