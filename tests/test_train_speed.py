"""The speed switches of the world-model update keep its math (issue 22): the hand-written RMSNorm and
channels_last convolutions give the native losses and gradients, the prefetch thread the same batches
and resumable stream, and the loss path reads nothing back to the host."""

import pytest
import torch

from reverie.config import compose
from reverie.world_model import networks
from reverie.world_model.backend import DataSpec, build, model_config
from reverie.world_model.data import write_toy_store
from reverie.world_model.train import Trainer, auto_threads, floats


@pytest.fixture(scope="module")
def toy_store(tmp_path_factory):
    return str(write_toy_store(tmp_path_factory.mktemp("data") / "toy.zarr", episodes=6, length=20))


def batch(b=2, t=6, size=16, j=5, a=4):
    g = torch.Generator().manual_seed(1)
    first = torch.zeros(b, t, dtype=torch.bool)
    first[:, 0] = True
    return {"image": torch.rand(b, t, size, size, 3, generator=g), "state": torch.randn(b, t, j, generator=g),
            "action": torch.rand(b, t, a, generator=g) * 2 - 1, "action_mask": torch.ones(b, t, dtype=torch.bool),
            "reward": torch.rand(b, t, generator=g), "is_first": first,
            "is_last": torch.zeros(b, t, dtype=torch.bool), "is_terminal": torch.zeros(b, t, dtype=torch.bool),
            "valid": torch.rand(b, t, generator=g) > 0.2,
            "instruction_embedding": torch.nn.functional.normalize(torch.randn(b, 384, generator=g), dim=-1)}


def loss_and_grads(fused, channels_last, cnn_depth=4, compiled=False):
    cfg = compose("train_wm", ["preset=tiny", "data=unused", f"preset.rssm.cnn_depth={cnn_depth}"])
    torch.manual_seed(0)
    model = build("rssm", model_config(cfg), DataSpec((16, 16, 3), 5, 4))
    networks.set_fused_norm(model, fused, compiled)
    networks.set_channels_last(model, channels_last)
    if compiled:
        assert model.image_enc.net[1].compiled and not model.state_enc.body[0][1].compiled  # conv norms only
    torch.manual_seed(5)  # the same latent samples
    loss, metrics = model.loss(batch())
    loss.backward()
    return loss.detach(), metrics, {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("shape,norm", [((3, 7, 32), networks.RMSNorm), ((4, 8, 5, 6), networks.ChannelNorm)])
def test_fused_rms_norm_matches_the_native_op(shape, norm):
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    n = norm(8 if norm is networks.ChannelNorm else 32, eps=1e-4).double()
    torch.nn.init.normal_(n.weight)
    out = {}
    for fused in (False, True):
        n.fused, x.grad, n.weight.grad = fused, None, None
        y = n(x)
        (y * torch.arange(y.numel(), dtype=y.dtype).reshape(y.shape).sin()).sum().backward()
        out[fused] = (y.detach(), x.grad.clone(), n.weight.grad.clone())
    for a, b in zip(out[False], out[True]):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda v, w: networks._RMSNorm.apply(v, w, 1e-4, -1),
                                    (torch.randn(3, 6, dtype=torch.float64, requires_grad=True),
                                     torch.randn(6, dtype=torch.float64, requires_grad=True)))


@pytest.mark.parametrize("switch", ["fused", "compiled", "channels_last"])
def test_switches_keep_losses_and_gradients(switch):
    base = loss_and_grads(fused=False, channels_last=False)
    other = loss_and_grads(fused=switch in ("fused", "compiled"), channels_last=switch == "channels_last",
                           compiled=switch == "compiled")
    assert torch.allclose(base[0], other[0], rtol=1e-5)
    for k in base[1]:
        assert torch.allclose(base[1][k], other[1][k], rtol=1e-4, atol=1e-6), k
    for k, g in base[2].items():
        assert torch.allclose(g, other[2][k], rtol=1e-3, atol=1e-6 * g.abs().max().item() + 1e-9), k


def test_the_update_reads_nothing_back_to_the_host(toy_store, tmp_path, monkeypatch):
    """No .item()/float()/bool() on a tensor in the loss, backward, clip and optimiser step (on a GPU each
    would stall the queue); metrics come back as 0-dim tensors and `floats` reads them in one copy."""
    trainer = Trainer(compose("train_wm", ["preset=tiny", f"data={toy_store}", f"out={tmp_path}", "threads=1",
                                           "prefetch=0", "progress=false"]))
    b = trainer.data.next()
    trainer.train_step(b)  # the first step builds the optimiser state

    names = ("item", "__float__", "__bool__", "__int__", "tolist")
    native = {n: getattr(torch.Tensor, n) for n in names}

    def refuse(*_):
        raise AssertionError("host sync in the train step")

    def guard(on):
        for n in names:
            setattr(torch.Tensor, n, refuse if on else native[n])
    step = trainer.optimizer.step

    def optimizer_step(*a, **k):  # CPU Adam reads its step counter (a CPU scalar, never a device sync)
        guard(False)
        try:
            return step(*a, **k)
        finally:
            guard(True)
    monkeypatch.setattr(trainer.optimizer, "step", optimizer_step)
    guard(True)
    try:
        metrics = trainer.train_step(b, log=False)
    finally:
        guard(False)
        monkeypatch.undo()
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in metrics.values())
    assert "grad_norm/total" in metrics and "grad_norm/core" not in metrics  # per-module norms on log steps only
    values = floats(trainer.train_step(b))
    assert isinstance(values["loss/total"], float) and "grad_norm/core" in values


def test_prefetch_gives_the_same_run_and_resumes_exactly(toy_store, tmp_path):
    def train(out, *extra):
        cfg = compose("train_wm", ["preset=tiny", f"data={toy_store}", f"out={out}", "progress=false",
                                   "log_every=2", "image_every=0", "threads=1", *extra])
        return Trainer(cfg).run()

    plain = train(tmp_path / "plain", "steps=6", "prefetch=0")
    ahead = train(tmp_path / "ahead", "steps=6", "prefetch=3")
    state = lambda t: {k: v.clone() for k, v in t.model.state_dict().items()}  # noqa: E731
    assert all(torch.equal(a, b) for a, b in zip(state(plain).values(), state(ahead).values()))
    assert plain.data.get_state() == ahead.data.get_state()
    train(tmp_path / "split", "steps=3", "prefetch=3")
    resumed = train(tmp_path / "split", "steps=6", "prefetch=3", "resume=true")
    for (k, a), b in zip(state(plain).items(), state(resumed).values()):
        assert torch.equal(a, b), k


def test_auto_threads():
    assert 1 <= auto_threads() <= 4 and auto_threads(64) == 1
