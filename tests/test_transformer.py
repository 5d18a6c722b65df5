"""Space x time transformer, tokenizer and dynamics: shapes, causality, KV cache, attention masks."""

import pytest
import torch

from reverie.world_model.dynamics import Dynamics
from reverie.world_model.tokenizer import Tokenizer, patchify, unpatchify
from reverie.world_model.transformer import Attention, SpaceTimeTransformer, rope, trim_cache

torch.manual_seed(0)

@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and leave the other core to the rest of the suite)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_layer_pattern_and_shapes():
    net = SpaceTimeTransformer(32, 8, heads=4, kv_heads=2, time_every=4)
    assert [b.time for b in net.blocks] == [False, False, False, True] * 2
    assert net.blocks[0].attn.kv.out_features == 2 * 2 * 8  # GQA: 2 key/value heads of width 8
    y, cache = net(torch.randn(2, 5, 6, 32))
    assert y.shape == (2, 5, 6, 32)
    assert len(cache) == 2 and cache[0][0].shape == (2 * 6, 2, 5, 8)  # (B*N, G, T, E)
    no_time = SpaceTimeTransformer(32, 3, heads=4, time_every=0)
    assert not any(b.time for b in no_time.blocks)


def test_rope_is_relative():
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)
    dots = [(rope(q, torch.tensor([p + 3])) * rope(k, torch.tensor([p]))).sum() for p in (0, 7, 100)]
    assert torch.allclose(dots[0], dots[1], atol=1e-4) and torch.allclose(dots[0], dots[2], atol=1e-4)
    assert torch.allclose(rope(q, torch.tensor([5])).norm(), q.norm(), atol=1e-5)


def test_softcap_bounds_logits_and_gqa_matches_sdpa_path():
    attn = Attention(32, heads=4, kv_heads=2, softcap=50.0)
    x, pos = torch.randn(3, 7, 32), torch.arange(7)
    mask = torch.ones(7, 7, dtype=torch.bool).tril()
    y_cap, _ = attn(x, pos, mask)
    attn.softcap = 0.0  # fused SDPA with GQA; with small logits the cap is almost the identity
    y_sdpa, _ = attn(x, pos, mask)
    assert torch.allclose(y_cap, y_sdpa, atol=1e-3)
    attn.softcap = 1e-3  # an extreme cap flattens attention to the mean of the allowed values
    y_flat, _ = attn(x, pos, None)
    assert torch.allclose(y_flat, y_flat[:, :1].expand_as(y_flat), atol=1e-3)


def test_time_attention_is_causal_and_segmented():
    net = SpaceTimeTransformer(32, 4, heads=4, kv_heads=1, time_every=2).eval()
    x = torch.randn(2, 6, 3, 32)
    y, _ = net(x)
    x2 = x.clone()
    x2[:, 4:] = torch.randn(2, 2, 3, 32)  # change the future
    y2, _ = net(x2)
    assert torch.allclose(y[:, :4], y2[:, :4], atol=1e-5)
    assert not torch.allclose(y[:, 4:], y2[:, 4:], atol=1e-3)
    # segments: frames 3.. start a new episode and must not read frames 0..2
    seg = torch.tensor([[0, 0, 0, 1, 1, 1]] * 2)
    ys, _ = net(x, segments=seg)
    x3 = x.clone()
    x3[:, :3] = torch.randn(2, 3, 3, 32)
    ys3, _ = net(x3, segments=seg)
    assert torch.allclose(ys[:, 3:], ys3[:, 3:], atol=1e-5)
    # single-image items (arange segments) equal running each frame alone
    yi, _ = net(x, segments=torch.arange(6).expand(2, 6))
    y_alone, _ = net(x[:, 2:3])
    assert torch.allclose(yi[:, 2:3], y_alone, atol=1e-5)


def test_kv_cache_equals_full_sequence():
    net = SpaceTimeTransformer(32, 4, heads=4, kv_heads=2, time_every=2).eval()
    x = torch.randn(2, 5, 3, 32)
    full, full_cache = net(x)
    cache, outs = None, []
    for t in range(5):
        y, cache = net(x[:, t:t + 1], cache=cache, t0=t)
        outs.append(y)
    assert torch.allclose(torch.cat(outs, 1), full, atol=1e-5)
    assert torch.allclose(cache[0][0], full_cache[0][0], atol=1e-5)
    assert trim_cache(cache, 2)[0][0].shape[2] == 2


def test_tokenizer_shapes_bottleneck_and_masks():
    tok = Tokenizer((16, 16, 3), patch=4, latents=4, bottleneck=3, dim=32, depth=2, heads=4,
                    time_every=2).eval()
    img = torch.rand(2, 3, 16, 16, 3)
    assert torch.equal(unpatchify(patchify(img, 4), 4, 16, 16), img)
    z = tok.encode(img)
    assert z.shape == (2, 3, 4, 3) and z.abs().max() <= 1  # tanh bottleneck
    assert tok.decode(z).shape == img.shape
    # encoder: patches read only patches, latents read all; decoder: queries read all, latents only latents
    p = tok.n_patch
    assert tok.enc_mask[:p, :p].all() and not tok.enc_mask[:p, p:].any() and tok.enc_mask[p:].all()
    assert tok.dec_mask[:p].all() and not tok.dec_mask[p:, :p].any() and tok.dec_mask[p:, p:].all()
    # the decoder's latents never read the queries: their outputs don't depend on query values
    lat = tok.from_z(z) + tok.dec_lat_pos
    q1 = tok.queries.expand(2, 3, -1, -1)
    y1, _ = tok.decoder(torch.cat([q1, lat], 2), tok.dec_mask)
    y2, _ = tok.decoder(torch.cat([torch.randn_like(q1), lat], 2), tok.dec_mask)
    assert torch.allclose(y1[:, :, p:], y2[:, :, p:], atol=1e-5)
    assert not torch.allclose(y1[:, :, :p], y2[:, :, :p], atol=1e-3)
    # masked autoencoding: per-image drop rates spread over [0, 0.9]
    rates = tok.sample_drop(512, 1, "cpu").float().mean(-1)  # (512, 1); E[p] = 0.45
    assert 0.38 < rates.mean() < 0.52 and rates.min() < 0.1 and rates.quantile(0.9) > 0.6
    # dropped patches don't leak: the latents are unchanged when a dropped patch's pixels change
    drop = torch.zeros(2, 3, p, dtype=torch.bool)
    drop[:, :, 0] = True
    img2 = img.clone()
    img2[:, :, :4, :4] = torch.rand(2, 3, 4, 4, 3)  # patch 0
    assert torch.allclose(tok.encode(img, drop), tok.encode(img2, drop), atol=1e-6)
    assert not torch.allclose(tok.encode(img), tok.encode(img2), atol=1e-4)


def test_tokenizer_is_causal_in_time():
    tok = Tokenizer((8, 8, 3), patch=4, latents=2, bottleneck=4, dim=32, depth=2, heads=2,
                    time_every=2).eval()
    img = torch.rand(1, 4, 8, 8, 3)
    img2 = img.clone()
    img2[:, 3] = torch.rand(8, 8, 3)
    assert torch.allclose(tok.encode(img)[:, :3], tok.encode(img2)[:, :3], atol=1e-6)


def _dyn(**kw):
    args = dict(latent_tokens=3, latent_dim=4, action_dim=2, dim=32, depth=4, heads=4, kv_heads=2,
                registers=2, agents=1, time_every=2, k_max=8, known_action=True)
    return Dynamics(**(args | kw)).eval()


def _dyn_inputs(b=2, t=5):
    z = torch.randn(b, t, 3, 4)
    return (z, torch.randint(0, 9, (b, t)), torch.randint(0, 4, (b, t)), torch.randn(b, t, 2),
            torch.ones(b, t, dtype=torch.bool), torch.randn(b, 384))


def test_dynamics_tokens_masks_and_actions():
    dyn = _dyn()
    z, ti, di, act, am, instr = _dyn_inputs()
    out, agent, _ = dyn(z, ti, di, act, am, instr)
    assert out.shape == z.shape and agent.shape == (2, 5, 32)
    assert dyn.n == 3 + 2 + 1 + 1 + 1
    # agent tokens are read by nothing: the instruction cannot change the latent predictions
    out2, agent2, _ = dyn(z, ti, di, act, am, torch.randn(2, 384))
    assert torch.allclose(out, out2, atol=1e-5) and not torch.allclose(agent, agent2, atol=1e-3)
    # a missing action is only the learned embedding: any action values are ignored when masked
    off = torch.zeros_like(am)
    o1, _, _ = dyn(z, ti, di, act, off, instr)
    o2, _, _ = dyn(z, ti, di, torch.randn_like(act), off, instr)
    assert torch.allclose(o1, o2, atol=1e-6) and not torch.allclose(o1, out, atol=1e-4)
    # action token of a frame: learned embedding + linear map of the components + "known" embedding
    tok = dyn.tokens(z, ti, di, act, am, instr)[:, :, dyn.s + dyn.r + 1]
    assert torch.allclose(tok, act @ dyn.act_in.weight.T + dyn.act_emb + dyn.act_known, atol=1e-5)


def test_missing_action_is_not_a_zero_command():
    # In action-free video the arm moves; were "missing" the token of a zero (stand-still) command,
    # that video would teach the model to discount small actions (half-labelled stores, issue 6).
    z, ti, di, act, am, instr = _dyn_inputs()
    zero, off = torch.zeros_like(act), torch.zeros_like(am)
    dyn = _dyn()
    a = dyn.s + dyn.r + 1  # the action token's slot
    assert not torch.allclose(dyn.tokens(z, ti, di, zero, am, instr)[:, :, a],
                              dyn.tokens(z, ti, di, zero, off, instr)[:, :, a], atol=1e-4)
    legacy = _dyn(known_action=False)  # checkpoints from before the switch: the two coincide
    assert legacy.act_known is None
    assert torch.allclose(legacy(z, ti, di, zero, am, instr)[0], legacy(z, ti, di, act, off, instr)[0], atol=1e-6)


def test_dynamics_causal_and_kv_cache_generation_matches_full_forward():
    dyn = _dyn()
    z, ti, di, act, am, instr = _dyn_inputs(t=6)
    full, agent_full, _ = dyn(z, ti, di, act, am, instr)
    z2 = z.clone()
    z2[:, 4:] += 1
    part, _, _ = dyn(z2, ti, di, act, am, instr)
    assert torch.allclose(full[:, :4], part[:, :4], atol=1e-5)
    cache, outs, agents = None, [], []
    for t in range(6):
        s = slice(t, t + 1)
        o, a, cache = dyn(z[:, s], ti[:, s], di[:, s], act[:, s], am[:, s], instr, cache=cache, t0=t)
        outs.append(o)
        agents.append(a)
    assert torch.allclose(torch.cat(outs, 1), full, atol=1e-5)
    assert torch.allclose(torch.cat(agents, 1), agent_full, atol=1e-5)
