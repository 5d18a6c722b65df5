"""bc_scratch.colour_swap (datasets/colour_swap.py): the frames' channels and the instruction's colour
words move together, so the demonstrated action still fits the renamed instruction."""

import numpy as np
import pytest

from reverie.errors import ConfigError
from reverie.datasets.colour_swap import CHANNELS, ColourSwap, swap

PRIMARY = {"red": (220, 30, 25), "green": (25, 165, 50), "blue": (30, 75, 230)}  # the sim's cube colours


def scene() -> dict:
    """(2, 4, 12, 3): a grey floor with one patch per cube colour, at columns 0-3, 4-7, 8-11."""
    frame = np.full((2, 4, 12, 3), 120, np.uint8)
    for i, rgb in enumerate(PRIMARY.values()):
        frame[:, :, 4 * i:4 * i + 4] = rgb
    return {"image/front": frame, "image/wrist": frame.copy(), "instruction": "push the red cube left",
            "action": np.arange(6.0)}


@pytest.mark.parametrize("perm", [[0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]])
def test_the_named_cube_shows_the_colour_the_new_instruction_names(perm):
    out = swap(scene(), np.array(perm))
    named = out["instruction"].split()[2]
    red_patch = out["image/front"][0, 0, 0]  # the cube the original instruction named
    assert CHANNELS[int(np.argmax(red_patch))] == named
    assert out["instruction"] == f"push the {named} cube left"
    assert named == CHANNELS[perm.index(0)]  # new channel j shows old channel perm[j]
    assert np.array_equal(out["image/wrist"], out["image/front"])  # every camera the same permutation
    assert np.array_equal(out["action"], scene()["action"])  # the demonstrated actions stay
    assert np.array_equal(out["image/front"][0, 0, 0], np.array(PRIMARY["red"])[perm])


def test_off_and_colourless_windows_pass_through_and_bad_probabilities_are_refused():
    window = scene()
    assert ColourSwap(0.0)(window) is window
    plain = {**window, "instruction": "wave at the camera"}
    assert ColourSwap(1.0)(plain) is plain
    always = ColourSwap(1.0, seed=3)
    drawn = [always(window) for _ in range(40)]
    assert {d["instruction"].split()[2] for d in drawn} == {"red", "green", "blue"}
    assert not any(np.array_equal(d["image/front"], window["image/front"]) for d in drawn)  # never the identity
    with pytest.raises(ConfigError, match=r"colour_swap=1.5: a probability in \[0, 1\]"):
        ColourSwap(1.5)


def test_the_scratch_stage_trains_on_swapped_windows(tiny_agent, tmp_path):
    """The same draws with and without the swap: every row's frames are a channel permutation of the
    plain ones, with an instruction renamed to match, and train-agent records the setting."""
    import json

    from reverie.config import compose
    from reverie.policy import train as agent_train
    from reverie.policy.data import AgentData
    from reverie.world_model import checkpoint

    setup = tiny_agent(tmp_path, episodes=3, time_limit=20, wm_steps=2, bc_steps=1, holdout=0.0)
    cfg = compose("train_agent", ["stage=bc_scratch", *setup["common"]])
    _, wm_cfg, wm_info = checkpoint.read(setup["wm"])
    drawn = {}
    for p in (0.0, 1.0):
        seen = []
        swapper = ColourSwap(p, seed=1)
        data = AgentData(cfg, wm_cfg, wm_info, batch_size=6, seq_len=2, weights=None,
                         augment=lambda w: seen.append(swapper(w)) or seen[-1])
        drawn[p] = (data.next()["image"], [w["instruction"] for w in seen])
    (plain, plain_text), (swapped, swapped_text) = drawn[0.0], drawn[1.0]
    for i in range(len(plain)):
        assert any(np.allclose(swapped[i].numpy(), plain[i].numpy()[..., list(perm)]) for perm in
                   ([0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]))
    assert any(a != b for a, b in zip(swapped_text, plain_text))  # (a permutation that keeps red keeps "red")
    out = agent_train.train(compose("train_agent", ["stage=bc_scratch", "steps=2", f"out={tmp_path / 'pix'}",
                                                    "bc_scratch.colour_swap=0.5", "bc_scratch.batch_size=4",
                                                    *setup["common"]]))
    assert json.loads((out / "scratch_bc.json").read_text())["colour_swap"] == 0.5
