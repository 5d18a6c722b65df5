"""A multi-camera scratch-BC policy (front + wrist) through export -> bundle -> runtime: every camera is
its own ONNX input and manifest entry, the bundle acts as ScratchController does on both, the sim
renders both and the recording keeps both, and a robot without the wrist camera is refused naming it
and the fix. Single-camera bundles keep their interface."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from reverie.config import compose
from reverie.errors import BundleError, ConfigError

sys.path.insert(0, str(Path(__file__).parent))
import export_setup  # noqa: E402

TEXT = "touch the red cube"


@pytest.fixture(scope="module")
def two_cams(tmp_path_factory) -> dict:
    """2 sim demos with front and wrist cameras -> tiny world model (its data choices) -> scratch BC
    with bc_scratch.cameras=[image/wrist] through the CLI, 2 steps -> bundle for the virtual SO-101."""
    from reverie.cli import main
    from reverie.sim.demos import record
    from reverie.world_model.train import Trainer

    root = tmp_path_factory.mktemp("cams")
    store = root / "wrist.zarr"
    record(compose("sim_demos", ["task=touch", "episodes=2", "skill=1.0", f"out={store}", "time_limit=10",
                                 "cameras=[front,wrist]"]))
    Trainer(compose("train_wm", ["preset=tiny", f"data={store}", f"out={root / 'wm'}", "steps=1", "progress=false",
                                 "holdout=0", "device=cpu", "compile_norm=false"])).run()  # no compile: 4 s less
    policy = root / "policy"
    assert main(["train-agent", "stage=bc_scratch", f"wm={root / 'wm'}", f"out={policy}", "steps=2", "holdout=0",
                 "bc_scratch.batch_size=4", "bc_scratch.cnn_depth=4", "agent.units=32", "agent.layers=1",
                 "progress=false", "device=cpu", "bc_scratch.cameras=[image/wrist]"]) == 0
    bundle = export_setup.export(policy, root / "bundle", "arm=so101_virtual", "parity_steps=20")
    return {"root": root, "store": store, "policy": policy, "bundle": bundle}


def test_each_camera_is_an_onnx_input_and_a_manifest_entry(two_cams):
    from reverie.runtime.bundle import Bundle

    m = json.loads((two_cams["bundle"] / "manifest.json").read_text())
    assert m["observation"]["image_key"] == "image/front" and m["observation"]["image"]["shape"] == [64, 64, 3]
    assert m["observation"]["extra_images"] == [{"key": "image/wrist", "shape": [64, 64, 3], "dtype": "uint8"}]
    specs = [s["name"] for s in m["state_tensors"]]
    assert m["onnx"]["policy"]["inputs"] == ["image", "state", "instruction", "image_wrist", *specs]
    assert m["parity"]["steps"] == 20 and m["parity"]["max_action_error"] <= 1e-4
    bundle = Bundle.load(two_cams["bundle"])
    assert bundle.image_keys == ["image/front", "image/wrist"]
    assert bundle.cameras == {"image/front": (64, 64, 3), "image/wrist": (64, 64, 3)}


def largest_action_gap(bundle, controller, ep: dict, steps: int) -> float:
    """Both reset on TEXT, then fed the episode's first `steps` rows (every camera): the largest
    |action| difference, in the graph's [-1, 1] units."""
    controller.reset(TEXT)
    bundle.reset()
    embedding = bundle.encoder.encode([TEXT])
    units = lambda a: bundle.normalizer.normalize("action", a)
    worst = 0.0
    for t in range(steps):
        obs = {key: ep[key][t] for key in ep}
        worst = max(worst, float(np.abs(units(bundle.act_on(obs, embedding)) - units(controller.act(obs))).max()))
    return worst


def test_bundle_acts_as_the_controller_with_both_cameras(two_cams):
    """ONNX parity with ScratchController on recorded rows, the chunk history carried; the wrist frame
    changes the action; a call with the main frame only names the cameras."""
    from reverie.datasets.store import EpisodeStore
    from reverie.runtime.bundle import Bundle
    from reverie.policy.loading import load_controller

    bundle, controller = Bundle.load(two_cams["bundle"]), load_controller(two_cams["policy"])
    store = EpisodeStore.open(two_cams["store"])
    ep = store.episode(0, keys=["image/front", "image/wrist", "state"])
    store.close()
    assert largest_action_gap(bundle, controller, ep, 8) < 1e-4
    embedding = bundle.encoder.encode([TEXT])
    bundle.reset()
    obs = {"image/front": ep["image/front"][0], "state": ep["state"][0]}
    white = bundle.act(obs["image/front"], obs["state"], embedding, [np.full((64, 64, 3), 255, np.uint8)])
    bundle.reset()
    black = bundle.act_on(obs | {"image/wrist": np.zeros((64, 64, 3), np.uint8)}, embedding)
    assert not np.allclose(white, black), "the bundle ignores the wrist frame"
    with pytest.raises(BundleError, match=r"reads cameras \['image/front', 'image/wrist'\]: act\(\) got 1 frame"):
        bundle.act(obs["image/front"], obs["state"], embedding)
    with pytest.raises(BundleError, match=r"observation lacks \['image/wrist'\] \(it has \['image/front'\]\)"):
        bundle.act_on(obs, embedding)


def deploy_and_check_recording(bundle: Path, store: Path, *target: str) -> None:
    """5 steps recorded: both cameras in the store, each its own view."""
    from reverie.datasets.store import EpisodeStore
    from reverie.runtime.deploy import deploy, parse

    results = deploy(parse([f"bundle={bundle}", *target, f"instruction={TEXT}", "steps=5", f"record={store}",
                            "stdin=false"]))
    assert results[0]["steps"] == 5
    s = EpisodeStore.open(store)
    ep = s.episode(0)
    assert {k for k in s.schema if k.startswith("image/")} == {"image/front", "image/wrist"}
    assert ep["image/wrist"].shape == (6, 64, 64, 3) and ep["image/front"].shape == (6, 64, 64, 3)
    assert not np.array_equal(ep["image/wrist"], ep["image/front"])  # two views, not one copied
    s.close()


def test_deploy_on_the_sim_renders_and_records_both_cameras(two_cams, quick, tmp_path):
    from reverie.runtime.deploy import main

    store = tmp_path / "deployed.zarr"
    deploy_and_check_recording(two_cams["bundle"], store, "robot=sim", "task=touch")
    # A front-only bundle recording into that store would fail at its first row: refused up front.
    with pytest.raises(ConfigError, match=r"holds cameras .*image/wrist.*record into a new store"):
        main([f"bundle={quick}", "robot=sim", f"instruction={TEXT}", "steps=5", f"record={store}", "stdin=false"])


def test_deploy_on_the_virtual_robot_reads_a_frame_file_per_camera(two_cams, tmp_path):
    from reverie.robot_io.virtual.launcher import VirtualArm

    link = tmp_path / "arm"
    with VirtualArm("feetech", link=link, cameras=["front", "wrist"]):
        deploy_and_check_recording(two_cams["bundle"], tmp_path / "deployed.zarr", "robot=virtual", f"link={link}")


def test_a_robot_without_the_wrist_camera_is_refused_before_torque(two_cams, tmp_path):
    """The virtual robot serving only the front camera: refused naming the wrist camera and the
    serve-bus option that adds it, before any servo's torque is on."""
    from reverie.runtime.deploy import main
    from reverie.robot_io.virtual.launcher import VirtualArm

    link = tmp_path / "arm"
    with VirtualArm("feetech", link=link, cameras=["front"]):
        with pytest.raises(BundleError, match=r"has no camera image/wrist \(it has \['image/front'\]\).*"
                                              r"serve-bus link=\S+ cameras=\[front,wrist\]"):
            main([f"bundle={two_cams['bundle']}", "robot=virtual", f"link={link}", f"instruction={TEXT}",
                  "stdin=false"])
        export_setup.assert_torque_never_enabled(link)  # refused before connect()


def test_bad_extra_images_in_a_manifest_are_refused(two_cams, tmp_path):
    from reverie.runtime import manifest
    from reverie.runtime.bundle import Bundle

    bundle = Path(shutil.copytree(two_cams["bundle"], tmp_path / "bundle"))
    good = json.loads((bundle / "manifest.json").read_text())
    cases = [([{"key": "wrist", "shape": [64, 64, 3]}], r"observation.extra_images is .*expected"),
             ([{"key": "image/wrist", "shape": [64, 64]}], r"observation.extra_images is .*expected"),
             ([{"key": "image/front", "shape": [64, 64, 3]}], "repeats the main camera 'image/front'"),
             ([], "takes inputs .*image_wrist.*different exports")]
    for extra, match in cases:
        m = json.loads(json.dumps(good))
        m["observation"]["extra_images"] = extra
        (bundle / "manifest.json").write_text(json.dumps(m))
        manifest.seal(bundle)
        with pytest.raises(BundleError, match=match):
            Bundle.load(bundle)


def test_export_refuses_a_store_without_the_extra_camera(two_cams, tmp_path):
    front_only = export_setup.synthetic_store(tmp_path / "front.zarr", episodes=1, length=5)
    with pytest.raises(ConfigError, match=r"has no camera 'image/wrist'.*pass data= with the stores the policy"):
        export_setup.export(two_cams["policy"], tmp_path / "bundle", f"data={front_only}")
    assert not (tmp_path / "bundle").exists()


def test_single_camera_bundles_keep_their_interface(quick):
    """A one-camera bundle: the same inputs and observation section as before extra cameras existed, and
    the frame-by-frame act() call still works."""
    from reverie.runtime.bundle import Bundle

    m = json.loads((quick / "manifest.json").read_text())
    assert m["onnx"]["policy"]["inputs"] == ["image", "state", "instruction"]
    assert set(m["observation"]) == {"image_key", "image", "state", "instruction"}
    bundle = Bundle.load(quick)
    assert bundle.image_keys == ["image/front"]
    frame, state = np.zeros((64, 64, 3), np.uint8), np.zeros(6, np.float32)
    embedding = bundle.encoder.encode([TEXT])
    assert np.array_equal(bundle.act(frame, state, embedding),
                          bundle.act_on({"image/front": frame, "state": state}, embedding))


@pytest.fixture(scope="module")
def two_cam_agent(two_cams) -> dict:
    """The same demos -> a tiny RSSM that observes both cameras (train-wm cameras=[image/wrist]) -> a
    behaviour-cloned agent on it through the CLI, 2 steps -> bundle for the virtual SO-101."""
    from reverie.cli import main
    from reverie.world_model.train import Trainer

    root, store = two_cams["root"], two_cams["store"]
    Trainer(compose("train_wm", ["preset=tiny", f"data={store}", f"out={root / 'wm2'}", "steps=1", "progress=false",
                                 "holdout=0", "device=cpu", "compile_norm=false", "cameras=[image/wrist]"])).run()
    agent = root / "agent2"
    assert main(["train-agent", "stage=bc", f"wm={root / 'wm2'}", f"out={agent}", "steps=2", "holdout=0",
                 "bc.batch_size=2", "bc.seq_len=4", "agent.units=32", "agent.layers=1", "progress=false",
                 "device=cpu"]) == 0
    bundle = export_setup.export(agent, root / "bundle2", "arm=so101_virtual", "parity_steps=20")
    return {"agent": agent, "bundle": bundle, "wm": root / "wm2"}


def test_a_world_model_agent_reads_every_camera_its_model_observes(two_cams, two_cam_agent):
    """The model's wrist camera is an ONNX input and manifest entry of its agent's bundle; the bundle
    acts as AgentController does on both cameras (latent state carried); the wrist frame changes the
    features; an observation without it is refused naming the fix."""
    from reverie.datasets.store import EpisodeStore
    from reverie.policy.loading import load_controller
    from reverie.runtime.bundle import Bundle

    m = json.loads((two_cam_agent["bundle"] / "manifest.json").read_text())
    assert m["observation"]["extra_images"] == [{"key": "image/wrist", "shape": [64, 64, 3], "dtype": "uint8"}]
    assert m["onnx"]["policy"]["inputs"][:4] == ["image", "state", "instruction", "image_wrist"]
    assert m["parity"]["steps"] == 20 and m["parity"]["max_action_error"] <= 1e-4
    controller, bundle = load_controller(two_cam_agent["agent"]), Bundle.load(two_cam_agent["bundle"])
    controller.wm.deterministic = True  # the graph's latents: the most likely classes (as export sets them)
    assert controller.image_keys == bundle.image_keys == ["image/front", "image/wrist"]
    store = EpisodeStore.open(two_cams["store"])
    ep = store.episode(0, keys=["image/front", "image/wrist", "state"])
    store.close()
    assert largest_action_gap(bundle, controller, ep, 6) < 1e-4
    obs = {key: ep[key][0] for key in ep}
    feats = []
    for wrist in (np.zeros((64, 64, 3), np.uint8), np.full((64, 64, 3), 255, np.uint8)):
        controller.reset(TEXT)
        batch = controller.batch(obs | {"image/wrist": wrist})
        with torch.no_grad():
            feats.append(controller.wm.observe(batch)[1])
    assert not np.allclose(feats[0].numpy(), feats[1].numpy()), "the world model ignores the wrist frame"
    controller.reset(TEXT)
    with pytest.raises(ConfigError, match=r"lacks \['image/wrist'\].*env_kwargs.cameras=\[front,wrist\]"):
        controller.act({"image/front": obs["image/front"], "state": obs["state"]})


def test_a_world_model_camera_missing_from_the_store_or_backend_is_refused(two_cams, tmp_path):
    from reverie.world_model.train import Trainer

    front_only = export_setup.synthetic_store(tmp_path / "front.zarr", episodes=2, length=5)
    common = ["preset=tiny", "steps=1", "progress=false", "holdout=0", "device=cpu"]
    with pytest.raises(ConfigError, match=r"has no camera 'image/wrist'.*drop it from cameras or record it"):
        Trainer(compose("train_wm", [*common, f"data={front_only}", f"out={tmp_path / 'a'}", "cameras=[image/wrist]"]))
    with pytest.raises(ConfigError, match=r"cameras=\['image/front'\] repeats the main camera"):
        Trainer(compose("train_wm", [*common, f"data={two_cams['store']}", f"out={tmp_path / 'b'}",
                                     "cameras=[image/front]"]))
    with pytest.raises(ConfigError, match=r"observes one camera .*image/wrist.*train world_model=rssm"):
        Trainer(compose("train_wm", [*common, "world_model=shortcut", f"data={two_cams['store']}",
                                     f"out={tmp_path / 'c'}", "cameras=[image/wrist]"]))
