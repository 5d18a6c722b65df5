import math

import pytest
import torch

from reverie.policy.distributions import BoundedNormal
from reverie.policy.pmpo import pmpo_loss
from reverie.policy.returns import lambda_returns, trajectory_weights
from reverie.policy.stats import wilson_interval


def test_lambda_returns_match_the_recursion_by_hand():
    torch.manual_seed(0)
    B, H, gamma, lam = 3, 5, 0.9, 0.8
    reward, cont, value = torch.rand(B, H), (torch.rand(B, H) > 0.2).float(), torch.randn(B, H + 1)
    out = lambda_returns(reward, cont, value, gamma, lam)
    for b in range(B):
        ret = value[b, H].item()
        for t in reversed(range(H)):
            ret = reward[b, t] + gamma * cont[b, t] * ((1 - lam) * value[b, t + 1] + lam * ret)
            assert out[b, t].item() == pytest.approx(float(ret), abs=1e-5)


def test_lambda_one_is_monte_carlo_and_lambda_zero_is_td():
    reward, cont, value = torch.tensor([[0.0, 0.0, 1.0]]), torch.ones(1, 3), torch.tensor([[5.0, 5.0, 5.0, 2.0]])
    mc = lambda_returns(reward, cont, value, gamma=0.5, lam=1.0)
    assert mc[0, 0].item() == pytest.approx(0.5 ** 2 * 1 + 0.5 ** 3 * 2)
    td = lambda_returns(reward, cont, value, gamma=0.5, lam=0.0)
    assert td[0, 0].item() == pytest.approx(0 + 0.5 * 5.0)


def test_trajectory_weights_stop_after_imagined_termination():
    cont = torch.tensor([[1.0, 0.0, 1.0, 1.0]])
    w = trajectory_weights(cont, gamma=1.0)
    assert w.tolist() == [[1.0, 1.0, 0.0, 0.0]]


def test_kl_matches_monte_carlo_estimate():
    torch.manual_seed(0)
    p = BoundedNormal(torch.tensor([0.3, -0.2]), torch.tensor([0.4, 0.7]))
    q = BoundedNormal(torch.tensor([-0.1, 0.1]), torch.tensor([0.6, 0.5]))
    x = p.mean + p.std * torch.randn(200_000, 2)
    mc = (p.log_prob(x) - q.log_prob(x)).mean()
    assert p.kl(q).item() == pytest.approx(mc.item(), rel=0.02)
    assert p.kl(p).item() == pytest.approx(0.0, abs=1e-6)


def test_bounded_normal_keeps_mode_and_std_in_range():
    dist = BoundedNormal.from_raw(torch.randn(100, 8) * 50, min_std=0.1, max_std=1.0)
    assert dist.mode().abs().max() <= 1.0
    assert dist.std.min() >= 0.1 and dist.std.max() <= 1.0


def test_pmpo_raises_likelihood_of_good_actions_and_lowers_bad_ones():
    logits = torch.zeros(4, requires_grad=True)
    advantage = torch.tensor([1.0, 2.0, -1.0, -0.5])
    loss, metrics = pmpo_loss(logits, advantage, torch.zeros(4), alpha=0.5, beta=0.0)
    loss.backward()
    assert (logits.grad[:2] < 0).all()  # gradient descent increases log pi of positives
    assert (logits.grad[2:] > 0).all()  # ... and decreases it for negatives
    assert metrics["pmpo/positive_fraction"] == pytest.approx(0.5)
    # Only the sign matters: scaling advantages changes nothing.
    loss2, _ = pmpo_loss(logits.detach(), advantage * 100, torch.zeros(4), beta=0.0)
    assert loss2.item() == pytest.approx(loss.item())


def test_pmpo_prior_term_is_weighted_mean_kl():
    kl = torch.tensor([1.0, 3.0])
    loss, _ = pmpo_loss(torch.zeros(2), torch.zeros(2), kl, beta=0.3)
    assert loss.item() == pytest.approx(0.3 * 2.0)


@pytest.mark.parametrize("k,n,lo,hi", [(0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0)])
def test_wilson_interval_known_values(k, n, lo, hi):
    a, b = wilson_interval(k, n)
    assert a == pytest.approx(lo, abs=1e-3) and b == pytest.approx(hi, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert not math.isnan(a)


def test_wilson_interval_always_holds_the_observed_rate(tmp_path):
    """At N/N the upper bound is 1 exactly (it came out as 0.9999999999999999 at 50/50, which made the
    report's error bar negative and crashed `make demo` after its 23 minutes of training)."""
    from reverie.policy.evaluate import plot

    for n in (1, 7, 50, 100, 200, 300):
        for k in range(n + 1):
            lo, hi = wilson_interval(k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0, (k, n)
        assert wilson_interval(n, n)[1] == 1.0 and wilson_interval(0, n)[0] == 0.0
    rows = {f"{k}/50": {"success_rate": k / 50, "ci95": list(wilson_interval(k, 50))} for k in (0, 25, 50)}
    plot(rows, tmp_path / "success.png")
    assert (tmp_path / "success.png").stat().st_size > 0


def test_temporal_ensemble_averages_what_each_chunk_said_about_now():
    """a_t = sum_j w_j chunk_{t-j}[j] / sum_j w_j over the chunks made so far (ACT), w_j = exp(-d j)."""
    import math

    import torch

    from reverie.policy.ensemble import TemporalEnsemble

    k, decay = 3, 0.5
    ens = TemporalEnsemble(k, decay)
    chunks = [torch.arange(k, dtype=torch.float32)[None, :, None] + 10 * t for t in range(5)]  # (1, K, 1)
    got = [float(ens(c)) for c in chunks]
    for t in range(5):
        terms = [(math.exp(-decay * j), float(chunks[t - j][0, j, 0])) for j in range(min(t + 1, k))]
        assert abs(got[t] - sum(w * v for w, v in terms) / sum(w for w, _ in terms)) < 1e-5
    assert got[0] == 0.0  # the first step executes the first chunk's first action
    ens.reset()
    assert float(ens(chunks[4])) == float(chunks[4][0, 0, 0])  # a new episode forgets the old chunks
    assert not TemporalEnsemble(k, None).on and not TemporalEnsemble(1, 0.1).on
