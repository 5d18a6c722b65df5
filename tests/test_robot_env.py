"""`make("robot/...")`: the virtual serial robot (`reverie sim serve-bus` on a pty, scoring its
instruction) as an Env for eval and improve, with operator takeover stored as corrections."""

import json
import time
from pathlib import Path

import numpy as np
import pytest

from reverie.errors import ConfigError, HardwareError
from reverie.robot_io.arm_bus import make_bus
from reverie.robot_io.config import load_arm
from reverie.robot_io.teleop import KeyboardTeleop
from reverie.robot_io.virtual.launcher import VirtualArm
from reverie.sim.registry import make
from reverie.specs import StepType

TASK = "touch the red cube"


@pytest.fixture(scope="module")
def arm(tmp_path_factory):
    with VirtualArm("feetech", link=tmp_path_factory.mktemp("robot_env") / "arm", instruction=TASK) as v:
        yield v


def torque(virtual) -> set[int]:
    spec = load_arm("so101_sim", port=virtual.link)
    with make_bus(spec) as bus:
        return set(bus.sync_read("Torque_Enable", spec.ids).values())


class Scripted:
    """A fixed action, and a hook per act() call (to press operator keys at chosen steps)."""

    def __init__(self, action=None, on_act=None):
        self.action = np.zeros(6, np.float32) if action is None else np.asarray(action, np.float32)
        self.on_act, self.acts, self.executed = on_act, 0, []

    def reset(self, instruction):
        self.instruction = instruction

    def act(self, observation):
        self.acts += 1
        if self.on_act:
            self.on_act(self.acts, observation)
        return self.action

    def observe_executed(self, action):
        self.executed.append(action)


def sim_instructions(seeds) -> list[str]:
    """What the sim eval of arm/touch asks at these seeds."""
    sim = make("arm/touch", image_size=(8, 8))
    try:
        return [sim.reset(seed=s).observation["instruction"] for s in seeds]
    finally:
        sim.close()


def test_robot_env_follows_the_env_contract(arm):
    env = make("robot/so101_sim", link=arm.link, time_limit=4)
    status = Path(f"{arm.link}.status")
    try:
        spec = env.observation_spec()
        assert spec["image/front"].shape == (64, 64, 3) and env.action_spec().shape == (6,)
        ts = env.reset(seed=0)
        # a fresh scene per reset, scoring what the sim draws for that seed from the served task
        assert ts.step_type == StepType.FIRST and [ts.observation["instruction"]] == sim_instructions([0])
        cubes = json.loads(status.read_text())["cubes"]
        assert ts.info["success"] is False and ts.info["correction"] is False
        for key, s in spec.items():
            s.validate(ts.observation[key], key)
        steps = [env.step(np.zeros(6, np.float32)) for _ in range(4)]
        assert [s.step_type for s in steps] == [StepType.MID] * 3 + [StepType.LAST]
        last = steps[-1]
        assert last.discount == 1.0 and last.reward == 0.0 and last.info["success"] is False  # scored: no touch
        with pytest.raises(HardwareError, match="reset"):
            env.step(np.zeros(6, np.float32))
        assert env.reset().step_type == StepType.FIRST  # a second episode on the same connection
        ts = env.reset(seed=1, instruction="lift the green cube")
        record = json.loads(status.read_text())
        assert ts.observation["instruction"] == record["instruction"] == "lift the green cube"
        assert record["success"] is False and record["cubes"] != cubes
        with pytest.raises(ConfigError, match="not one the sim arm understands"):
            env.reset(instruction="dance a jig")  # refused by the server, scene untouched
    finally:
        env.close()
    assert torque(arm) == {0}  # parked: safe pose, torque released


def test_eval_reports_the_virtual_robots_score(arm, tmp_path):
    from reverie.policy.evaluate import evaluate

    kwargs = {"link": arm.link, "time_limit": 5}
    report = evaluate(Scripted(), "robot/so101_sim", episodes=2, suites=["train", "shifted"],
                      env_kwargs=kwargs, progress=False)
    assert list(report) == ["train"]  # a robot has no shifted physics: skipped with a warning
    assert report["train"]["episodes"] == 2 and report["train"]["successes"] == 0
    # the sim eval's episodes: the same seeds give the same instructions (and scenes)
    asked = sim_instructions([10_000, 10_001])
    assert sorted(report["train"]["per_instruction"]) == sorted(set(asked))
    assert max(p["ci95"][1] for p in report["train"]["per_instruction"].values()) > 0.5  # failures say little

    status = Path(f"{arm.link}.status")

    def succeed(n, _):  # what the server's scorer writes when the cube is touched (see robot_io/virtual/server.py: Scorer)
        if n == 2:
            record = json.loads(status.read_text())
            status.write_text(json.dumps({**record, "success": True, "success_time": time.time()}))

    report = evaluate(Scripted(on_act=succeed), "robot/so101_sim", episodes=2, suites=["train"],
                      env_kwargs=kwargs, progress=False)
    # episode 1 ends on the scored success at o_2; episode 2 started later, so it runs to its time limit
    assert report["train"]["successes"] == 1 and report["train"]["mean_length"] == (3 + 6) / 2


def test_takeover_rows_are_stored_as_corrections(arm, tmp_path):
    from reverie.datasets.store import EpisodeStore
    from reverie.policy.record import record_rollouts

    operator = KeyboardTeleop(load_arm("so101_sim"))
    episode = []

    def keys(n, observation):
        if len(episode) == 1 and n == 2:
            operator.press("c")  # take over ...
        if len(episode) == 1 and n in (3, 4, 5):
            operator.press("w")  # ... raise shoulder_lift by hand ...
        if len(episode) == 1 and n == 5:
            operator.press("c")  # ... and hand back

    controller = Scripted(action=[0, 0, 0, -0.5, 0, 0], on_act=keys)
    controller.reset = lambda instruction: episode.append(instruction)
    deployed = record_rollouts(controller, "robot/so101_sim", episodes=2, store_path=tmp_path / "r.zarr",
                               round_index=3, seed=0, env_kwargs={"link": arm.link, "time_limit": 8,
                                                                  "operator": operator}, progress=False)
    assert deployed["episodes"] == 2
    store = EpisodeStore.open(tmp_path / "r.zarr")
    assert [store.meta(i).source for i in range(2)] == ["correction", "policy"]
    assert {store.meta(i).round for i in range(2)} == {3} and store.meta(0).success is False
    first = store.episode(0)
    corrected = np.asarray(first["correction"])
    # `c` pressed while acting on o_1 takes effect from o_2 on, the second one (on o_4) from o_5
    assert corrected.tolist() == [False] * 2 + [True] * 3 + [False] * 4
    actions = np.asarray(first["action"])
    assert np.all(actions[2:5, 3] == 0) and np.all(actions[:2, 3] == -0.5)  # the operator's, not the policy's
    assert actions[2, 1] == 0 and actions[3, 1] > 0  # no jump on taking over; then the `w` presses
    assert len(controller.executed) == 3  # the controller heard each executed action
    assert not np.asarray(store.episode(1)["correction"]).any()
    assert torque(arm) == {0}


def test_missing_link_and_unknown_arm_are_clear_errors(arm, tmp_path):
    with pytest.raises(HardwareError, match="reverie sim serve-bus protocol=feetech link="):
        make("robot/so101_sim", link=str(tmp_path / "nothing"))
    with pytest.raises(ConfigError, match="arm config 'no_such_arm' not found"):
        make("robot/no_such_arm", link=arm.link)
    with pytest.raises(ConfigError, match="not both"):
        make("robot/so101_sim", link=arm.link, port="/dev/ttyACM0")
    with pytest.raises(ConfigError, match="unknown option"):
        make("robot/so101_sim", link=arm.link, episodes=3)


def test_a_failing_controller_still_parks_the_arm(arm):
    from reverie.policy.evaluate import evaluate

    def boom(n, _):
        if n == 2:
            raise RuntimeError("policy crashed")

    with pytest.raises(RuntimeError, match="policy crashed"):
        evaluate(Scripted(on_act=boom), "robot/so101_sim", episodes=1, suites=["train"],
                 env_kwargs={"link": arm.link, "time_limit": 5}, progress=False)
    assert torque(arm) == {0}


def test_eval_command_runs_a_policy_on_the_virtual_robot(arm, tmp_path, capsys):
    import torch

    from reverie.cli import main
    from reverie.policy.scratch_bc import ScratchPolicy, save

    torch.manual_seed(0)  # an untrained reactive policy: the command's path is under test, not its skill
    policy = ScratchPolicy(64, 6, 6, cnn_depth=4, units=16, layers=1).eval()
    save(tmp_path / "policy", policy, {"image_key": "image/front"})
    code = main(["eval", f"policy={tmp_path / 'policy'}", "env=robot/so101_sim", f"link={arm.link}",
                 "episodes=2", "+env_kwargs.time_limit=4", f"out={tmp_path / 'eval'}", "progress=false",
                 "videos=1", "device=cpu"])
    assert code == 0
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert list(report) == ["train"] and report["train"]["episodes"] == 2  # heldout/shifted skipped
    assert list((tmp_path / "eval").glob("train_ep000_*.gif"))
    assert torque(arm) == {0}
    assert main(["eval", f"policy={tmp_path / 'policy'}", "env=arm/touch", f"link={arm.link}"]) == 2
    assert "options of robot envs (env=robot/<arm config>)" in capsys.readouterr().err


def test_improve_runs_a_round_on_the_virtual_robot(arm, tmp_path, tiny_agent):
    from reverie.config import compose
    from reverie.datasets.store import EpisodeStore
    from reverie.workflows.improve import improve

    # the smallest world model and agent that run (tests/test_policy.py trains and checks them properly)
    bc = tiny_agent(tmp_path, episodes=2, time_limit=20, wm_steps=2, bc_steps=2, holdout=0)["bc"]
    rows = improve(compose("improve", [
        f"wm={tmp_path / 'wm'}", f"agent={bc}", f"prior={bc}", f"out={tmp_path / 'imp'}", "rounds=1",
        "episodes=2", "wm_steps=2", "rl_steps=2", "eval_episodes=2", "progress=false", "device=cpu",
        "env=robot/so101_sim", f"link={arm.link}", "+env_kwargs.time_limit=5"]))
    deployed = EpisodeStore.open(tmp_path / "imp" / "round_1" / "policy.zarr")
    assert deployed.num_episodes == 2 and deployed.meta(0).round == 1
    assert {deployed.meta(i).source for i in range(2)} == {"policy"}  # nobody took over
    assert "correction" in deployed.schema and deployed.robot == "robot/so101_sim"
    assert rows["round 1"]["train"]["episodes"] == 2
    assert "| round 1 | 0.0% [0, 66] | 0.0% of 2 |" in (tmp_path / "imp" / "improve.md").read_text()
    assert torque(arm) == {0}


def test_operator_starts_labels_and_quits_on_a_physical_arm(arm):
    """A physical arm has no score: the operator starts each episode (Enter) and labels it."""
    from reverie.policy.evaluate import summarize
    from reverie.policy.rollout import run_episode
    from reverie.robot_io.camera_setup import build_cameras
    from reverie.robot_io.robot import Robot
    from reverie.robot_io.robot_env import RobotEnv

    spec = load_arm("so101_sim", port=arm.link, cameras=arm.camera_config())
    operator, said = KeyboardTeleop(spec), []
    env = RobotEnv(Robot(spec, cameras=build_cameras(spec.cameras)), time_limit=6, operator=operator,
                   status=None, instruction="put the red cube in the bowl", start="key", label_timeout_s=0.2,
                   say=said.append)  # status=None: as on real hardware, nobody scores the task
    try:
        def press_at_second_act(key):
            return Scripted(on_act=lambda n, _: n == 2 and operator.press(key))

        operator.press("\r")  # the scene is reset: start
        labelled = run_episode(env, press_at_second_act("+"), seed=0)
        assert labelled.success and labelled.labelled and labelled.length == 3 and labelled.ret == 1.0
        operator.press("\r")
        stopped = run_episode(env, press_at_second_act(" "), seed=1)  # Space, then no label within 0.2 s
        assert not stopped.success and not stopped.labelled and stopped.length == 3
        operator.press("\x1b")  # Esc instead of Enter: one step, then the caller stops
        quit_ = run_episode(env, Scripted(), seed=2)
        assert env.quit and quit_.length == 2 and not quit_.labelled
    finally:
        env.close()
    assert any("reset the scene" in line for line in said) and any("episode over" in line for line in said)
    assert summarize([labelled, stopped])["unlabelled"] == 1
    assert torque(arm) == {0}


def test_deploy_gives_each_virtual_episode_after_the_first_a_fresh_scene(arm):
    from reverie.runtime.targets import ArmTarget

    status = Path(f"{arm.link}.status")
    target = ArmTarget(load_arm("so101_sim", port=arm.link, cameras=arm.camera_config()), 10.0, status, seed=3)
    target.connect()
    try:
        served = json.loads(status.read_text())
        target.reset("touch the red cube")  # episode 0: the scene serve-bus has, no request
        assert json.loads(status.read_text()).get("reset") == served.get("reset")
        obs = target.reset("lift the blue cube")  # episode 1: the scene of seed 3 + 1, scoring its text
        record = json.loads(status.read_text())
        assert record["seed"] == 4 and record["instruction"] == "lift the blue cube" and record["success"] is False
        assert obs["instruction"] == "lift the blue cube"
        target.reset("wave at the camera")  # any text drives the policy; the score is then for a drawn task
        assert json.loads(status.read_text())["seed"] == 5
    finally:
        target.close()
