"""A world-model backend added from outside world_model/: one WorldModel subclass with its own exported
step (world_model/step.py) and one `register` call. No preset names it: its config carries its own
sizes. It trains through the real trainer, an agent is behaviour-cloned on it, and `reverie export`
writes its bundle with the toy's step, checked against PyTorch by the export's own parity run."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from reverie.world_model import backend
from reverie.world_model.backend import WorldModel

sys.path.insert(0, str(Path(__file__).parent))
import export_setup  # noqa: E402
from reverie.world_model.step import FilterStep, StateSpec, prepare_image

# What reverie/conf/world_model/toy.yaml would hold: no preset has a `toy:` section, so these are its sizes.
TOY = {"name": "toy", "image_size": 16, "hidden": 24, "lr": 3e-3, "adam_eps": 1e-8, "weight_decay": 0.0,
       "grad_clip": 100.0, "batch_size": 2, "seq_len": 6}


class ToyStep(FilterStep):
    """The toy's exported filter step: the same cell as observe, on one frame, h carried."""

    built = 0

    def __init__(self, wm, image_hw):
        super().__init__(wm, image_hw)
        self.size = int(wm.cfg.image_size)
        ToyStep.built += 1

    def specs(self) -> list[StateSpec]:
        return [StateSpec("toy_h", (1, self.wm.feat_dim))]

    def forward(self, image, state, instruction, prev_action, is_first, toy_h):
        keep = 1.0 - is_first                                                   # (1,)
        img = prepare_image(image, self.size)                                   # (1, s, s, 3)
        h = self.wm.cell(img, state, prev_action, keep, toy_h * keep[:, None], instruction)
        return h, h


class Toy(WorldModel):
    """h_t = tanh(W [embed(o_t), a_{t-1} (zero where unknown), h_{t-1}, instruction]); heads read h."""

    onnx_step = ToyStep

    def __init__(self, cfg, spec):
        super().__init__(cfg, spec)
        s, h = int(cfg.image_size), int(cfg.hidden)
        self.size, self.feat_dim = s, h
        self.embed = nn.Linear(s * s * 3 + spec.state_dim, h)
        self.core = nn.Linear(h + spec.action_dim + h + spec.instruction_dim, h)
        self.image_head = nn.Linear(h, s * s * 3)
        self.state_head = nn.Linear(h, spec.state_dim)
        self.losses: list[float] = []

    def cell(self, image, state, prev_action, known, h, instr):
        """image (B, s, s, 3) in [0, 1], state (B, J), prev_action (B, A), known (B,) float, h (B, F)."""
        e = torch.tanh(self.embed(torch.cat([image.flatten(1), state], -1)))
        return torch.tanh(self.core(torch.cat([e, prev_action * known[:, None], h, instr], -1)))

    def observe(self, batch, state=None):
        image, obs, instr = batch["image"].float(), batch["state"], batch["instruction_embedding"]
        b, t = obs.shape[:2]
        h = state["h"] if state is not None else obs.new_zeros(b, self.feat_dim)
        action, mask = batch["action"], batch["action_mask"].bool()
        first_a = batch.get("prev_action", torch.zeros_like(action[:, 0]))[:, None]
        first_m = batch.get("prev_action_mask", torch.zeros_like(mask[:, 0]))[:, None].bool()
        prev, known = torch.cat([first_a, action[:, :-1]], 1), torch.cat([first_m, mask[:, :-1]], 1)
        feats = []
        for i in range(t):
            keep = (~batch["is_first"][:, i].bool()).float()                   # (B,)
            h = self.cell(image[:, i], obs[:, i], prev[:, i], known[:, i].float() * keep, h * keep[:, None], instr)
            feats.append(h)
        return {"h": h, "instr": instr}, torch.stack(feats, 1)                 # feat (B, T, F)

    def loss(self, batch):
        _, feat = self.observe(batch)
        image = ((self.decode({"h": feat}) - batch["image"].float()) ** 2).mean()
        state = ((self.state_head(feat) - batch["state"]) ** 2).mean()
        total = image + state
        self.losses.append(float(total.detach()))
        return total, {"loss/total": total.detach(), "loss/image": image.detach(), "loss/state": state.detach()}

    def imagine(self, state, policy, horizon):
        h, instr = state["h"], state["instr"]
        feats, actions = [h], []
        for _ in range(horizon):
            a = policy(h)                                                       # (B, A)
            e = h.new_zeros(h.shape[0], self.feat_dim)                          # nothing observed
            h = torch.tanh(self.core(torch.cat([e, a, h, instr], -1)))
            feats.append(h)
            actions.append(a)
        feat = torch.stack(feats, 1)                                            # (B, H+1, F)
        zeros = feat.new_zeros(feat.shape[0], horizon)
        return {"feat": feat, "action": torch.stack(actions, 1), "reward": zeros, "cont": zeros + 1,
                "state": {"h": feat, "instr": instr}}

    def decode(self, state):
        h = state["h"]
        return torch.sigmoid(self.image_head(h)).reshape(*h.shape[:-1], self.size, self.size, 3)


@pytest.fixture
def toy():
    backend.register("toy")(Toy)  # the one registration
    yield
    backend.unregister("toy")


def demo_store(path, episodes=3, length=15):
    """Random 64x64 frames (the step resizes them to 16), labelled successful so BC clones them."""
    return export_setup.synthetic_store(path, episodes, length, texts=("touch the red cube", "lift the green cube"),
                                        success=True)


def test_a_registered_backend_trains_and_exports_with_its_own_step(toy, tmp_path):
    from reverie.config import compose
    from reverie.export.onnx_export import export
    from reverie.policy.train import train
    from reverie.world_model.train import Trainer

    store = demo_store(tmp_path / "demos.zarr")
    cfg = compose("train_wm", ["preset=tiny", f"data={store}", f"out={tmp_path / 'wm'}", "steps=3",
                               "progress=false", "device=cpu", "image_every=1", "holdout=0"])
    OmegaConf.set_struct(cfg, False)
    cfg.world_model = TOY  # what `world_model=toy` composes from its YAML
    trainer = Trainer(cfg)
    assert isinstance(trainer.model, Toy) and "toy" not in cfg.preset  # sizes from the backend's own config
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.run()
    losses = trainer.model.losses
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses) and len(set(losses)) > 1
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())  # it learned

    agent = train(compose("train_agent", ["stage=bc", f"wm={tmp_path / 'wm'}", f"out={tmp_path / 'agent'}",
                                          "steps=2", "progress=false", "device=cpu", "bc.seq_len=6",
                                          "bc.batch_size=2", "holdout=0"]))
    built = ToyStep.built
    out = export(compose("export", [f"policy={agent.parent}", f"out={tmp_path / 'bundle'}",
                                    "arm=so101_virtual", "parity_steps=40"]))
    assert ToyStep.built > built  # the exporter asked the backend for its step
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["policy"]["kind"] == "toy" and manifest["policy"]["model_image_size"] == 16
    names = [s["name"] for s in manifest["state_tensors"]]  # the toy's, then the agent step's own
    assert names[:3] == ["toy_h", "prev_action", "is_first"] and set(names[3:]) <= {"chunk_history", "chunk_valid"}
    parity = manifest["parity"]  # ONNX against the PyTorch controller, across an episode start
    assert parity["steps"] == 40 and parity["episodes"] == 3 and parity["max_action_error"] <= 1e-4


def test_a_backend_without_a_step_is_refused_naming_the_exportable_ones(toy):
    from reverie.errors import BundleError
    from reverie.export.policy_module import AgentStep
    from reverie.world_model.backend import DataSpec, build

    class Frozen(Toy):
        onnx_step = None

    wm = build("toy", OmegaConf.create(TOY), DataSpec((16, 16, 3), 6, 6))
    assert isinstance(AgentStep(wm, _agent(wm), (64, 64)).filter, ToyStep)
    with pytest.raises(BundleError, match="no exported step"):
        AgentStep(Frozen(OmegaConf.create(TOY), DataSpec((16, 16, 3), 6, 6)), _agent(wm), (64, 64))
    assert {"rssm", "shortcut", "toy"} <= {n for n, c in backend.load_backends().items() if c.onnx_step}


def test_a_preset_without_the_backend_needs_its_sizes_in_the_backend_config(toy):
    from reverie.config import compose
    from reverie.errors import ConfigError
    from reverie.world_model.backend import model_config

    cfg = compose("train_wm", ["preset=tiny", "data=x"])
    OmegaConf.set_struct(cfg, False)
    cfg.world_model = {k: v for k, v in TOY.items() if k not in ("image_size", "seq_len")}
    with pytest.raises(ConfigError, match="no section for backend 'toy'.*does not set image_size, seq_len"):
        model_config(cfg)
    cfg.world_model = TOY
    assert model_config(cfg).hidden == 24


def _agent(wm):
    from reverie.policy.agent import Agent

    return Agent(wm.feat_dim, 6, units=16, layers=1).eval()
