"""The RSSM backend and its building blocks, on random tensors (tiny preset, seconds)."""

import pytest
import torch

from reverie.config import compose
from reverie.world_model.backend import (BACKENDS, DataSpec, WorldModel, build, load_backends,
                                         model_config, replay_policy)
from reverie.world_model.networks import BlockGRU, ConvDecoder, PixelMean, TwoHot, symexp, symlog

B, T, J, A = 2, 6, 5, 4


def make_model(*overrides, dynalang=False):
    cfg = compose("train_wm", ["preset=tiny", "data=unused", *overrides])
    spec = DataSpec((16, 16, 3), J, A, lang_dim=8 if dynalang else 0)
    torch.manual_seed(0)
    return build("rssm", model_config(cfg), spec)


def make_batch(dynalang=False):
    g = torch.Generator().manual_seed(1)
    batch = {
        "image": torch.rand(B, T, 16, 16, 3, generator=g),
        "state": torch.randn(B, T, J, generator=g),
        "action": torch.rand(B, T, A, generator=g) * 2 - 1,
        "action_mask": torch.ones(B, T, dtype=torch.bool),
        "reward": torch.rand(B, T, generator=g),
        "is_first": torch.zeros(B, T, dtype=torch.bool),
        "is_last": torch.zeros(B, T, dtype=torch.bool),
        "is_terminal": torch.zeros(B, T, dtype=torch.bool),
        "instruction_embedding": torch.nn.functional.normalize(torch.randn(B, 384, generator=g), dim=-1),
    }
    batch["is_first"][:, 0] = True
    if dynalang:
        batch["lang_token"] = torch.randn(B, T, 8, generator=g)
    return batch


def test_symlog_twohot_roundtrip():
    x = torch.tensor([-1000.0, -3.0, -0.5, 0.0, 0.2, 7.0, 12345.0])
    assert torch.allclose(symexp(symlog(x)), x, rtol=1e-4)
    th = TwoHot(255, 20.0)
    target = th.target(x)
    assert torch.allclose(target.sum(-1), torch.ones(len(x)))
    assert (target > 0).sum(-1).max() <= 2
    # Logits equal to the log of the two-hot weights decode back to the value.
    assert torch.allclose(th.mean(torch.log(target + 1e-12)), x, rtol=1e-3, atol=1e-3)


def test_block_gru_is_block_diagonal_and_keeps_shape():
    gru = BlockGRU([3, 2], deter=32, hidden=8, blocks=8, layout="wide")
    deter = torch.zeros(4, 32)
    out = gru(deter, [torch.randn(4, 3), torch.randn(4, 2)])
    assert out.shape == (4, 32) and torch.isfinite(out).all()
    assert gru.gates.weight.shape == (8, 8, 3 * 32 // 8)  # G x (hidden) x (3 D / G) per block


def test_block_gru_v3_layout_is_dreamerv3s():
    """The v3 core (DreamerV3's `_core`): hidden layers of width deter, each block D/G -> D/G plus the
    joint embedding, then gates D -> 3D; the wide layout (older checkpoints) keeps blocks x hidden."""
    d, h, g, inputs = 64, 16, 8, [3, 2]
    v3 = BlockGRU(inputs, deter=d, hidden=h, blocks=g, layout="v3", layers=2)
    assert [tuple(l.weight.shape) for l in v3.layers] == [(g, d // g + 3 * h, d // g), (g, d // g, d // g)]
    assert v3.gates.weight.shape == (g, d // g, 3 * d // g)
    wide = BlockGRU(inputs, deter=d, hidden=h, blocks=g, layout="wide")
    assert wide.hidden.weight.shape == (g, d // g + 3 * h, h) and wide.gates.weight.shape == (g, h, 3 * d // g)
    out = v3(torch.zeros(4, d), [torch.randn(4, 3), torch.randn(4, 2)])
    assert out.shape == (4, d) and torch.isfinite(out).all()
    # block-diagonal: with the embedding fixed, block 0's slice of deter feeds only block 0's gates
    def gates(z):  # (1, D) -> (3D,)
        x = torch.cat([z.reshape(1, g, -1), torch.zeros(1, g, 3 * h)], -1).reshape(1, -1)
        for layer in v3.layers:
            x = layer(x)
        return v3.gates(x)[0]
    jac = torch.autograd.functional.jacobian(gates, torch.randn(1, d))[:, 0, : d // g]  # (3D, D/G)
    assert torch.count_nonzero(jac.reshape(g, -1)[1:]) == 0 and torch.count_nonzero(jac.reshape(g, -1)[0]) > 0


@pytest.mark.parametrize("core", ["v3", "wide"])
def test_both_core_layouts_learn(core):
    """A short tiny-preset fit of one batch: the loss falls with either GRU layout."""
    model = make_model(f"world_model.core={core}")
    assert model.core.layout == core
    batch = make_batch()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss, _ = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5, losses


def test_registry_and_errors():
    assert "rssm" in load_backends()
    assert issubclass(BACKENDS["rssm"], WorldModel)
    cfg = compose("train_wm", ["preset=tiny", "data=x"])
    with pytest.raises(Exception, match="unknown world model backend"):
        build("nope", model_config(cfg), DataSpec((16, 16, 3), J, A))


def test_loss_terms_and_gradients():
    model = make_model()
    loss, metrics = model.loss(make_batch())
    for key in ("image", "state", "reward", "cont", "dyn", "rep"):
        assert f"loss/{key}" in metrics
    # Free bits: each KL term is clipped below at 1 nat.
    assert metrics["loss/dyn"] >= 1.0 and metrics["loss/rep"] >= 1.0
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.image_enc.net[0].weight.grad.abs().sum() > 0  # reconstruction reaches the encoder
    assert model.core.gates.weight.grad.abs().sum() > 0
    # Zero-initialised reward output: reward starts at 0 whatever the features.
    assert torch.count_nonzero(model.reward_head.out.weight) == 0


def test_action_shift_uses_previous_action():
    """Row t is entered with a_{t-1}: changing the last action changes nothing observed; changing a_0
    changes the step into o_1 onward."""
    model = make_model()
    batch = make_batch()
    torch.manual_seed(3)
    _, feat = model.observe(batch)
    b2 = {k: v.clone() for k, v in batch.items()}
    b2["action"][:, -1] += 0.5
    torch.manual_seed(3)
    _, feat2 = model.observe(b2)
    assert torch.equal(feat, feat2)
    b3 = {k: v.clone() for k, v in batch.items()}
    b3["action"][:, 0] = -b3["action"][:, 0]
    torch.manual_seed(3)
    _, feat3 = model.observe(b3)
    assert torch.equal(feat[:, 0], feat3[:, 0])
    assert not torch.allclose(feat[:, 1, : model.deter_dim], feat3[:, 1, : model.deter_dim])


def test_action_free_rows_train_and_differ_from_zero_action():
    model = make_model()
    batch = make_batch()
    batch["action_mask"][:] = False
    loss, _ = model.loss(batch)
    loss.backward()
    assert torch.isfinite(loss)
    # "No action" is its own input (mask bit 0), not the same as a zero command.
    zero = model._action_input(torch.zeros(B, A), torch.ones(B, dtype=torch.bool))
    none = model._action_input(torch.randn(B, A), torch.zeros(B, dtype=torch.bool))
    assert torch.equal(none, torch.zeros_like(none)) and not torch.equal(zero, none)


def test_is_first_resets_the_state():
    model = make_model()
    batch = make_batch()
    batch["is_first"][:, 3] = True  # a new episode starts at row 3
    torch.manual_seed(5)
    _, feat = model.observe(batch)
    tail = {k: (v[:, 3:] if v.dim() > 1 and v.shape[1] == T else v) for k, v in batch.items()}
    torch.manual_seed(5)
    model.observe({k: (v[:, :3] if v.dim() > 1 and v.shape[1] == T else v) for k, v in batch.items()})
    _, feat_tail = model.observe(tail)
    assert torch.allclose(feat[:, 3:], feat_tail, atol=1e-6)


def test_imagine_and_decode_shapes():
    model = make_model()
    batch = make_batch()
    state, feat = model.observe(batch)
    assert feat.shape == (B, T, model.feat_dim)
    actions = torch.rand(B, 5, A)
    traj = model.imagine(state, replay_policy(actions), horizon=5)
    assert traj["feat"].shape == (B, 6, model.feat_dim)
    assert torch.equal(traj["feat"][:, 0], feat[:, -1])          # start state included
    assert torch.equal(traj["action"], actions)
    assert traj["reward"].shape == (B, 5) and traj["cont"].shape == (B, 5)
    assert ((traj["cont"] >= 0) & (traj["cont"] <= 1)).all()
    frames = model.decode(traj["state"])
    assert frames.shape == (B, 6, 16, 16, 3) and frames.min() >= 0 and frames.max() <= 1
    assert model.decode(state).shape == (B, 16, 16, 3)


def test_instruction_conditions_the_prior():
    model = make_model()
    batch = make_batch()
    torch.manual_seed(0)
    a, _ = model.observe(batch)
    b2 = dict(batch, instruction_embedding=-batch["instruction_embedding"])
    torch.manual_seed(0)
    b, _ = model.observe(b2)
    assert not torch.allclose(a["deter"], b["deter"])


def test_dynalang_tokens_are_input_and_target():
    model = make_model("world_model.dynalang=true", dynalang=True)
    batch = make_batch(dynalang=True)
    loss, metrics = model.loss(batch)
    assert "loss/lang" in metrics and metrics["loss/lang"] > 0
    loss.backward()
    assert model.lang_enc.body[0][0].weight.grad.abs().sum() > 0


def test_a_few_steps_reduce_the_loss():
    model = make_model()
    batch = make_batch()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(15):
        loss, _ = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < first


def test_padding_past_the_episode_end_is_invisible_to_the_loss():
    """Rows with valid False (the sampler's padding of short episodes) change neither loss nor metrics."""
    model = make_model()
    batch = make_batch()
    batch["valid"] = torch.ones(B, T, dtype=torch.bool)
    batch["valid"][0, 4:] = False  # item 0: a 4-row episode padded to T
    other = {k: v.clone() for k, v in batch.items()}
    for key in ("image", "state", "action", "reward"):
        other[key][0, 4:] = torch.rand_like(other[key][0, 4:]) * 5
    other["is_terminal"][0, 4:], other["is_first"][0, 5] = True, True

    start = {k: v.clone() for k, v in model.state_dict().items()}

    def run(b):  # from the same weights and running mean frame each time
        model.load_state_dict(start)
        torch.manual_seed(0)
        return model.loss(b)

    (loss, metrics), mean = run(batch), model.pixels.pixel_mean.clone()
    loss2, metrics2 = run(other)
    assert torch.allclose(mean, model.pixels.pixel_mean)  # the padding does not enter the mean frame either
    assert torch.allclose(loss, loss2) and metrics.keys() == metrics2.keys()
    assert all(abs(metrics[k] - metrics2[k]) < 1e-4 * max(1.0, abs(metrics[k])) for k in metrics), metrics
    # ...and with every item cut at the same row it equals the loss of the valid rows alone.
    batch["valid"][:, 4:] = False
    cut = {k: (v if k == "instruction_embedding" else v[:, :4]) for k, v in batch.items() if k != "valid"}
    assert torch.allclose(run(batch)[0], run(cut)[0], atol=1e-5)


def test_pixel_mean_weights_the_foreground():
    """Pixels like the mean frame weigh 1, pixels far from it 1 + boost; before any frame, or at boost 0, all 1."""
    pm = PixelMean(8, boost=10.0)
    scene = torch.full((8, 8, 3), 0.4)
    assert torch.equal(pm.weights(scene), torch.ones(8, 8))  # no mean yet: plain MSE
    pm.update(scene.expand(5, 8, 8, 3))
    assert torch.allclose(pm.pixel_mean, scene)
    frame = scene.clone()
    frame[2:4, 5:7] = torch.tensor([0.9, 0.1, 0.1])  # a red cube on the table
    frame[0, 0] += 0.05                               # half the threshold: half the boost
    w = pm.weights(frame)
    assert torch.allclose(w[2:4, 5:7], torch.full((2, 2), 11.0))
    assert torch.isclose(w[0, 0], torch.tensor(6.0)) and w[7, 7] == 1.0
    assert torch.equal(PixelMean(8, boost=0.0).weights(frame), torch.ones(8, 8))
    # The mean follows the frames: a running average, so two updates of a and b give their midpoint.
    pm2 = PixelMean(8, boost=1.0)
    pm2.update(torch.zeros(1, 8, 8, 3))
    pm2.update(torch.ones(1, 8, 8, 3))
    assert torch.allclose(pm2.pixel_mean, torch.full((8, 8, 3), 0.5))


def test_decoder_draws_the_base_image_before_it_learns():
    dec = ConvDecoder(12, 16, 4)
    last = dec.net[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    base = torch.rand(16, 16, 3) * 0.9 + 0.05
    out = dec(torch.randn(3, 12), base)
    assert torch.allclose(out, base.expand(3, 16, 16, 3), atol=1e-5)
    assert torch.allclose(dec(torch.randn(3, 12)), torch.full((3, 16, 16, 3), 0.5))  # no base: grey


def test_foreground_weight_scales_the_image_term_and_is_optional():
    """The weighted image term counts the foreground more; image_foreground=0 is DreamerV3's plain sum."""
    batch = make_batch()
    plain, weighted = make_model("world_model.image_foreground=0"), make_model("world_model.image_foreground=10")
    weighted.load_state_dict(plain.state_dict())
    torch.manual_seed(0)
    _, m0 = plain.loss(batch)
    torch.manual_seed(0)
    _, m1 = weighted.loss(batch)
    assert m1["loss/image"] > 2 * m0["loss/image"]  # random frames are far from their mean almost everywhere
    assert abs(m1["image_mse"] - m0["image_mse"]) < 1e-6  # the reported MSE stays unweighted
    assert float(weighted.pixels.mean_count) == 1 and float(plain.pixels.mean_count) == 1


def test_frame_latent_is_observed_then_predicted_and_heads_ignore_it():
    """world_model.frame=K: observed features end with the frame's K-wide latent, imagined ones with its
    prediction from the state; the model's own heads read only deter and stoch."""
    model = make_model("world_model.frame=8")
    batch = make_batch()
    core = model.core_dim
    assert model.feat_dim == core + 8
    loss, metrics = model.loss(batch)
    assert torch.isfinite(loss) and "loss/frame" in metrics
    state, feat = model.observe(batch)
    assert feat.shape == (B, T, core + 8)
    frame = model.frame_proj(model._embed(batch))                          # (B, T, 8)
    assert torch.allclose(feat[..., core:], frame, atol=1e-5)
    traj = model.imagine(state, lambda f: torch.zeros(f.shape[0], A), 3)
    assert traj["feat"].shape == (B, 4, core + 8) and traj["state"]["frame"].shape == (B, 4, 8)
    predicted = model.frame_pred(traj["feat"][:, 1:, :core])
    assert torch.allclose(traj["feat"][:, 1:, core:], predicted, atol=1e-5)
    assert model.decode(traj["state"]).shape == (B, 4, 16, 16, 3)
    # The heads' inputs exclude the frame: changing it changes no head output.
    f = traj["feat"].clone()
    f[..., core:] += 5.0
    assert torch.equal(model.reward_head(model._core(f)), model.reward_head(model._core(traj["feat"])))


def test_frame_decode_gives_the_image_loss_a_continuous_path_to_the_encoder():
    """frame_decode=true: the image decoder reads (deter, stoch, frame), so the image loss reaches the
    encoder through the frame latent as well as through the posterior; imagined frames decode from the
    predicted latent. Without a frame latent the option is refused, naming the key to set."""
    from reverie.errors import ConfigError

    model = make_model("world_model.frame=8", "world_model.frame_decode=true")
    assert model.decode_dim == model.feat_dim == model.core_dim + 8
    batch = make_batch()
    loss, _ = model.loss(batch)
    model.zero_grad()
    loss.backward()
    assert model.frame_proj[0].weight.grad.abs().sum() > 0
    state, feat = model.observe(batch)
    decoded = model.decode({"deter": torch.zeros(B, model.deter_dim), "stoch": torch.zeros(B, model.stoch, model.classes),
                            "frame": feat[:, -1, model.core_dim:]})
    moved = model.decode({"deter": torch.zeros(B, model.deter_dim), "stoch": torch.zeros(B, model.stoch, model.classes),
                          "frame": feat[:, -1, model.core_dim:] + 1.0})
    assert not torch.allclose(decoded, moved)                                # the frame latent is drawn
    traj = model.imagine(state, lambda f: torch.zeros(f.shape[0], A), 2)
    assert model.decode(traj["state"]).shape == (B, 3, 16, 16, 3)
    assert make_model("world_model.frame=8").decode_dim == make_model().core_dim  # off: the heads' input only
    # frame_input: the next step's core reads the last frame latent, so a later frame changes the state
    model = make_model("world_model.frame=8", "world_model.frame_decode=true", "world_model.frame_input=true")
    loss, _ = model.loss(batch)
    assert torch.isfinite(loss)
    state, _ = model.observe(batch)
    nudged = dict(state, frame=state["frame"] + 1.0)
    step = lambda s: model.img_step(s, model._action_input(torch.zeros(B, A), torch.ones(B, dtype=torch.bool)))[0]
    assert not torch.allclose(step(state)["deter"], step(nudged)["deter"])
    for key in ("frame_decode", "frame_input"):
        with pytest.raises(ConfigError, match=f"world_model.{key}=true .* set world_model.frame="):
            make_model(f"world_model.{key}=true")


def test_coordconv_stages_read_pixel_coordinates_and_keep_the_layouts():
    """coords=true: every conv of the encoder and decoder reads 2 extra channels, x and y in [-1, 1],
    the same in NCHW and channels_last memory; off (the default, and runs saved before the key) builds
    the plain stacks."""
    from reverie.world_model.networks import ConvEncoder, Coords, set_channels_last

    grid = Coords(4).grid
    assert grid.shape == (1, 2, 4, 4)
    assert torch.allclose(grid[0, 0, 0], torch.tensor([-1, -1 / 3, 1 / 3, 1.0]))            # x along the width
    assert torch.allclose(grid[0, 1, :, 0], torch.tensor([-1, -1 / 3, 1 / 3, 1.0]))          # y along the height
    enc, dec = ConvEncoder(16, 4, coords=True), ConvDecoder(12, 16, 4, coords=True)
    assert sum(isinstance(m, Coords) for m in enc.net) == 2 and sum(isinstance(m, Coords) for m in dec.net) == 2
    assert sum(isinstance(m, Coords) for m in ConvDecoder(12, 16, 4).net) == 0
    image, feat = torch.rand(3, 16, 16, 3), torch.randn(3, 12)
    before = enc(image), dec(feat)
    set_channels_last(torch.nn.ModuleList([enc, dec]), True)
    assert torch.allclose(enc(image), before[0], atol=1e-5) and torch.allclose(dec(feat), before[1], atol=1e-5)
    model = make_model("world_model.coords=true")
    total, _ = model.loss(make_batch())
    total.backward()
    assert all(p.grad is not None for p in model.image_dec.parameters())


def test_an_extra_camera_is_encoded_reconstructed_and_saved_in_the_spec():
    """DataSpec.cameras: the RSSM gets an encoder, decoder and mean frame per extra camera; the wrist
    frame changes the posterior and the image loss, its gradient reaches its own encoder; a spec saved
    before cameras existed loads as one camera."""
    cfg = compose("train_wm", ["preset=tiny", "data=unused"])
    spec = DataSpec((16, 16, 3), J, A, cameras=("image/wrist",))
    assert DataSpec.from_json(spec.to_json()) == spec
    assert DataSpec.from_json({k: v for k, v in spec.to_json().items() if k != "cameras"}).cameras == ()
    torch.manual_seed(0)
    model = build("rssm", model_config(cfg), spec)
    assert len(model.camera_enc) == len(model.camera_dec) == len(model.camera_pixels) == 1
    batch = make_batch() | {"image/wrist": torch.rand(B, T, 16, 16, 3, generator=torch.Generator().manual_seed(2))}
    loss, metrics = model.loss(batch)
    assert "image_mse/wrist" in metrics
    loss.backward()
    assert model.camera_enc[0].net[0].weight.grad.abs().sum() > 0
    assert model.camera_dec[0].inp.weight.grad.abs().sum() > 0
    model.eval()
    torch.manual_seed(0)
    with torch.no_grad():
        _, feat = model.observe(batch)
        other_loss, _ = model.loss(batch | {"image/wrist": 1 - batch["image/wrist"]})
        torch.manual_seed(0)
        _, other = model.observe(batch | {"image/wrist": 1 - batch["image/wrist"]})
    assert not torch.allclose(feat, other) and not torch.isclose(loss.detach(), other_loss)
    with pytest.raises(KeyError, match="image/wrist"):
        model.loss(make_batch())
