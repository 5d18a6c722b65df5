"""Export: the step modules equal AgentController, the ONNX graphs equal PyTorch, the manifest."""

import json

import numpy as np
import pytest


def tiny_controller(backend: str, ensemble=None, *overrides):
    """An untrained tiny world model + agent of `backend` at 16x16 (the images come at 64x64, so the
    graph's resize is exercised), as AgentController with deterministic latents; with `ensemble` a
    4-action chunk executed by temporal ensembling."""
    import torch

    from reverie.config import compose
    from reverie.policy.agent import Agent
    from reverie.policy.controller import AgentController
    from reverie.world_model.backend import DataSpec, build, model_config

    torch.manual_seed(0)
    cfg = model_config(compose("train_wm", ["preset=tiny", f"world_model={backend}", "data=x", *overrides]))
    wm = build(backend, cfg, DataSpec((16, 16, 3), 6, 6)).eval()
    wm.deterministic = True
    for name, buf in wm.named_buffers():  # trained-looking statistics (e.g. the tokenizer's mean image)
        if buf.is_floating_point() and buf.dim() > 0 and "mean" in name:
            buf.uniform_(0.2, 0.8)
    agent = Agent(wm.feat_dim, 6, units=32, layers=1, chunk=4 if ensemble is not None else 1).eval()
    return AgentController(wm, agent, "image/front", 16, ensemble=ensemble)


def replay(controller, step_fn, rng, steps=28, episode=17):
    """Random observations with episode starts every `episode` steps and an instruction switch
    inside each episode; returns the max |action difference| between controller and step_fn."""
    from reverie.language import embed

    texts = ["touch the red cube", "lift the green cube"]
    worst = 0.0
    for t in range(steps):
        if t % episode == 0:
            controller.reset(texts[0])
            step_fn(None)  # reset the carried state
        if t % episode == episode // 2:
            controller.set_instruction(texts[1])
        obs = {"image/front": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
               "state": rng.normal(0, 0.5, 6).astype(np.float32)}
        expected = controller.act(obs)
        got = step_fn((obs, embed([controller.instruction]).astype(np.float32)))
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def torch_stepper(step):
    import torch

    state = {}

    def fn(item):
        if item is None:
            state["carried"] = [s.zeros() for s in step.state_specs()]
            return None
        obs, instr = item
        with torch.no_grad():
            out = step(torch.from_numpy(obs["image/front"][None]), torch.from_numpy(obs["state"][None]),
                       torch.from_numpy(instr), *state["carried"])
        state["carried"] = list(out[1:])
        return out[0][0].numpy()
    return fn


def onnx_stepper(sess, step):
    """replay()'s step_fn for an onnxruntime session of `step`: carries the state tensors itself."""
    carried = {}

    def fn(item):
        if item is None:
            carried["x"] = [s.zeros().numpy() for s in step.state_specs()]
            return None
        obs, instr = item
        out = sess.run(None, dict(zip(step.input_names(),
                                      [obs["image/front"][None], obs["state"][None], instr, *carried["x"]])))
        carried["x"] = out[1:]
        return out[0][0]
    return fn


@pytest.mark.parametrize("ensemble", [None, 0.1])
@pytest.mark.parametrize("backend", ["rssm", "shortcut"])
def test_step_module_equals_agent_controller(backend, ensemble):
    """The exported computation, run in PyTorch, is exactly AgentController's (state carried, the
    first-step reset inside the module, the shortcut's growing cache as a fixed masked window, the
    chunk history of temporal ensembling)."""
    from reverie.export.policy_module import AgentStep

    controller = tiny_controller(backend, ensemble)
    step = AgentStep(controller.wm, controller.agent, (64, 64))  # the backend's own onnx_step inside
    step.ensemble(controller.agent.chunk, ensemble)
    assert len(step.state_specs()) == len(step.model_specs()) + (2 if ensemble is not None else 0)
    # 28 steps in 17-step episodes: the shortcut window (7 frames) fills and slides.
    worst = replay(controller, torch_stepper(step), np.random.default_rng(0))
    assert worst < 1e-6


@pytest.mark.parametrize("ensemble", [None, 0.1])
def test_rssm_onnx_matches_pytorch(tmp_path, ensemble):
    from reverie.export.onnx_export import export_policy
    from reverie.export.policy_module import AgentStep
    from reverie.runtime.text_encoder import session

    controller = tiny_controller("rssm", ensemble)
    step = AgentStep(controller.wm, controller.agent, (64, 64)).ensemble(controller.agent.chunk, ensemble)
    export_policy(step, tmp_path / "policy.onnx", 18)
    sess = session(tmp_path / "policy.onnx")
    assert [i.name for i in sess.get_inputs()] == step.input_names()
    assert replay(controller, onnx_stepper(sess, step), np.random.default_rng(1)) < 1e-4


def test_rssm_carrying_the_frame_latent_exports_with_parity(tmp_path):
    """An RSSM whose core reads the last frame latent (frame_input) carries it as a fourth state
    tensor through the graph; ONNX acts as AgentController does."""
    from reverie.export.onnx_export import export_policy
    from reverie.export.policy_module import AgentStep
    from reverie.runtime.text_encoder import session

    controller = tiny_controller("rssm", 0.1, "world_model.frame=8", "world_model.frame_decode=true",
                                 "world_model.frame_input=true")
    step = AgentStep(controller.wm, controller.agent, (64, 64)).ensemble(controller.agent.chunk, 0.1)
    assert [s.name for s in step.model_specs()][:3] == ["deter", "stoch", "frame"]
    assert replay(controller, torch_stepper(step), np.random.default_rng(0)) < 1e-6
    export_policy(step, tmp_path / "policy.onnx", 18)
    assert replay(controller, onnx_stepper(session(tmp_path / "policy.onnx"), step), np.random.default_rng(1)) < 1e-4


@pytest.mark.parametrize("norm", ["channel", "layer"])
def test_scratch_onnx_with_ensembling_matches_controller(tmp_path, norm):
    """The stateless pixel baseline gains carried state only for its chunk history; the graph's
    actions are ScratchController's."""
    import torch

    from reverie.export.onnx_export import export_policy
    from reverie.export.policy_module import ScratchStep
    from reverie.runtime.text_encoder import session
    from reverie.policy.scratch_bc import ScratchController, ScratchPolicy

    torch.manual_seed(0)
    policy = ScratchPolicy(16, 6, 6, cnn_depth=4, units=32, layers=1, chunk=4, film=True, norm=norm).eval()
    for p in policy.parameters():  # FiLM and the head start at zero: give them something to say
        torch.nn.init.normal_(p, 0, 0.2)
    controller = ScratchController(policy, "image/front", ensemble=0.1)
    step = ScratchStep(policy, (64, 64)).ensemble(4, 0.1)
    assert [s.name for s in step.state_specs()] == ["chunk_history", "chunk_valid"]
    export_policy(step, tmp_path / "policy.onnx", 18)
    sess = session(tmp_path / "policy.onnx")
    assert replay(controller, onnx_stepper(sess, step), np.random.default_rng(2)) < 1e-4


def test_manifest_detects_missing_and_changed_files(tmp_path):
    from reverie.errors import BundleError
    from reverie.runtime import manifest

    for name in manifest.REQUIRED:
        (tmp_path / name).write_bytes(name.encode() * 10)
    keys = {k: {} for k in manifest.REQUIRED_KEYS if k not in ("format", "files")}
    manifest.write(tmp_path, keys)
    assert set(manifest.verify(tmp_path)["files"]) == set(manifest.REQUIRED)
    (tmp_path / "tokenizer.json").write_bytes(b"x" * len(b"tokenizer.json" * 10))  # same size, new bytes
    with pytest.raises(BundleError, match="checksum"):
        manifest.verify(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match="missing"):
        manifest.verify(tmp_path)


def test_manifest_is_sealed_by_its_digest(tmp_path):
    """manifest.json.sha256 (sha256sum format) beside the manifest, checked before it is parsed: one
    changed character is refused, and so is a missing or unreadable digest; a re-export reseals."""
    import hashlib

    from reverie.errors import BundleError
    from reverie.runtime import manifest

    for name in manifest.REQUIRED:
        (tmp_path / name).write_bytes(name.encode())
    content = {k: {} for k in manifest.REQUIRED_KEYS if k not in ("format", "files")}
    content["control_hz"] = 30.0
    path = manifest.write(tmp_path, content)
    digest = (tmp_path / manifest.DIGEST).read_text()
    assert digest == f"{hashlib.sha256(path.read_bytes()).hexdigest()}  manifest.json\n"
    assert manifest.DIGEST not in manifest.verify(tmp_path)["files"]
    path.write_text(path.read_text().replace("30.0", "90.0"))  # still valid JSON, same length
    with pytest.raises(BundleError, match=r"manifest.json fails its checksum \(sha256 [0-9a-f]{12}\.\.\., "
                                          r"manifest.json.sha256 says [0-9a-f]{12}\.\.\.\): it was edited"):
        manifest.read(tmp_path)
    (tmp_path / manifest.DIGEST).write_bytes(b"\xff\xfe")
    with pytest.raises(BundleError, match="says nothing readable"):
        manifest.read(tmp_path)
    (tmp_path / manifest.DIGEST).unlink()
    with pytest.raises(BundleError, match="manifest.json.sha256 is missing"):
        manifest.verify(tmp_path)
    manifest.write(tmp_path, content)  # an export over the folder: the old digest is not a bundle file
    assert manifest.read(tmp_path)["control_hz"] == 30.0
    assert set(manifest.read(tmp_path)["files"]) == set(manifest.REQUIRED)


def test_quick_export_writes_a_verified_bundle(quick):
    """The CLI path on a scratch-BC policy: files, manifest content, parity numbers, ONNX versions."""
    import onnx

    from reverie.runtime import manifest

    bundle = quick
    m = manifest.verify(bundle)
    assert set(m["files"]) == {"policy.onnx", "text_encoder.onnx", "tokenizer.json"}
    assert m["policy"]["kind"] == "scratch_bc" and m["state_tensors"] == []
    assert m["observation"]["image"]["shape"] == [64, 64, 3] and m["action"]["shape"] == [6]
    assert m["robot"]["name"] == "so101_virtual" and m["control_hz"] == 30.0
    assert len(m["robot"]["action_scale"]) == 6 and m["robot"]["action_mode"] == "delta"
    assert m["parity"]["steps"] == 40 and m["parity"]["max_action_error"] <= 1e-4
    assert m["parity"]["max_embedding_error"] <= 1e-4
    model = onnx.load(str(bundle / "policy.onnx"))
    assert model.ir_version <= 10 and max(o.version for o in model.opset_import if o.domain == "") >= 18
    assert m["versions"]["onnxruntime"] and m["versions"]["torch"]


def test_text_encoder_onnx_matches_torch(quick):
    from reverie.runtime.text_encoder import TextEncoder
    from reverie.language import embed

    bundle = quick
    texts = ["pick up the red cube", "a", "push the blue cube to the left " * 40]  # the last is truncated
    got = TextEncoder(bundle).encode(texts)
    assert got.shape == (3, 384)
    assert np.abs(got - embed(texts)).max() < 1e-4
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["rssm", "shortcut"])
def test_trained_agent_exports_with_1000_step_parity(trained, backend):
    """The issue's path: demos -> tiny world model -> BC agent -> bundle; parity over 1,000 recorded
    steps with the state carried, within 1e-4 for actions and embeddings."""
    bundle = trained[backend]
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["policy"]["kind"] == backend
    assert m["parity"]["steps"] >= 1000 and m["parity"]["episodes"] >= 2
    assert m["parity"]["max_action_error"] <= 1e-4 and m["parity"]["max_embedding_error"] <= 1e-4
    names = [s["name"] for s in m["state_tensors"]]
    assert names[-2:] == ["prev_action", "is_first"]
    assert m["onnx"]["policy"]["inputs"] == ["image", "state", "instruction", *names]
