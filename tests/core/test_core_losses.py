import math

import pytest
import torch

from eapo.core.losses import AGGREGATIONS, aggregate, k3_kl, policy_loss, policy_loss_terms


def _ref_token_loss(lp, old, adv, lo, hi):
    r = math.exp(lp - old)
    return -min(r * adv, min(max(r, 1 - lo), 1 + hi) * adv)


def _ref_loss(logp, old, adv, mask, agg, lo=0.2, hi=0.28, norm_len=None):
    B, T = logp.shape
    per_seq, all_tok = [], []
    for b in range(B):
        toks = [
            _ref_token_loss(logp[b, t].item(), old[b, t].item(), adv[b, t].item(), lo, hi)
            for t in range(T)
            if mask[b, t]
        ]
        all_tok += toks
        if not toks:
            continue
        if agg == "seq_mean_token_mean":
            per_seq.append(sum(toks) / len(toks))
        elif agg == "seq_mean_token_sum_norm":
            per_seq.append(sum(toks) / (norm_len or T))
    if agg == "token_mean":
        return sum(all_tok) / len(all_tok)
    return sum(per_seq) / len(per_seq)


def _batch():
    B, T = 4, 6
    logp = -torch.rand(B, T) * 2
    old = logp + 0.4 * torch.randn(B, T)
    adv = torch.tensor([1.5, -0.7, 0.3, -2.0]).reshape(-1, 1) * (0.5 + torch.rand(B, T))
    mask = torch.tensor(
        [[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]]
    ).bool()
    logp[~mask] = 50.0  # garbage on padding must not leak into the loss (no inf/NaN)
    return logp, old, adv, mask


@pytest.mark.parametrize("agg", sorted(AGGREGATIONS))
@pytest.mark.parametrize("norm_len", [None, 10])
def test_loss_matches_python_loop_reference(agg, norm_len):
    logp, old, adv, mask = _batch()
    loss, metrics = policy_loss(logp, old, adv, mask, agg=agg, norm_len=norm_len)
    expected = _ref_loss(logp, old, adv, mask, agg, norm_len=norm_len)
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert metrics["pg_loss"] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())


def test_aggregations_differ_as_documented():
    v = torch.tensor([[1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]]).bool()
    assert aggregate(v, m, "token_mean").item() == pytest.approx(8 / 5)
    assert aggregate(v, m, "seq_mean_token_mean").item() == pytest.approx((1 + 4) / 2)
    assert aggregate(v, m, "seq_mean_token_sum_norm").item() == pytest.approx((4 / 4 + 4 / 4) / 2)
    assert aggregate(v, m, "seq_mean_token_sum_norm", norm_len=8).item() == pytest.approx((4 / 8 + 4 / 8) / 2)
    with pytest.raises(ValueError, match="token_mean"):
        aggregate(v, m, "sum")


def test_clip_fraction_hand_made():
    # ratios e^{logp-old}: 1.5 (A>0: clipped at 1.28), 0.5 (A>0: not clipped, min picks r·A),
    # 0.5 (A<0: clipped at 0.8), 1.1 (inside), 1.5 (A<0: not clipped), masked 3.0.
    r = torch.tensor([[1.5, 0.5, 0.5, 1.1, 1.5, 3.0]])
    adv = torch.tensor([[1.0, 1.0, -1.0, 1.0, -1.0, 1.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]]).bool()
    old = torch.zeros(1, 6)
    logp = torch.log(r)
    loss, metrics = policy_loss(logp, old, adv, mask)
    assert metrics["clip_frac"] == pytest.approx(2 / 5)
    per_tok = torch.tensor([-1.28, -0.5, 0.8, -1.1, 1.5])
    assert loss.item() == pytest.approx(per_tok.mean().item(), rel=1e-6)
    # approx_kl = mean over valid tokens of (r − 1) − log r
    rv = r[0, :5]
    assert metrics["approx_kl"] == pytest.approx(((rv - 1) - rv.log()).mean().item(), rel=1e-6)


def test_gradient_is_zero_on_clipped_tokens_and_masked_tokens():
    logp = torch.log(torch.tensor([[1.5, 1.1, 2.0]])).requires_grad_()
    adv = torch.tensor([[1.0, 1.0, 1.0]])
    mask = torch.tensor([[True, True, False]])
    loss, _ = policy_loss(logp, torch.zeros(1, 3), adv, mask)
    loss.backward()
    assert logp.grad[0, 0] == 0 and logp.grad[0, 2] == 0
    assert logp.grad[0, 1] == pytest.approx(-1.1 / 2)  # d(−r·A)/dlogp = −r·A, token_mean over 2 tokens


def test_kl_off_by_default_and_added_when_enabled():
    logp, old, adv, mask = _batch()
    ref = logp - 0.3
    base, m0 = policy_loss(logp, old, adv, mask, ref_logp=ref)
    assert base.item() == pytest.approx(policy_loss(logp, old, adv, mask)[0].item())
    expected_kl = math.exp(-0.3) + 0.3 - 1  # k3 = e^d − d − 1 with d = ref − logp = −0.3 everywhere
    assert m0["kl"] == pytest.approx(expected_kl, rel=1e-5)
    with_kl, _ = policy_loss(logp, old, adv, mask, ref_logp=ref, kl_coef=0.1)
    assert with_kl.item() == pytest.approx(base.item() + 0.1 * expected_kl, rel=1e-5)
    with pytest.raises(ValueError, match="ref_logp"):
        policy_loss(logp, old, adv, mask, kl_coef=0.1)
    assert torch.all(k3_kl(torch.randn(50), torch.randn(50)) >= 0)


def test_terms_support_micro_batch_accumulation():
    # Summing per-token terms over micro-batches and dividing by the global token count reproduces the full-batch
    # token_mean gradient; averaging per-micro-batch token_means would not (the micro-batches differ in length).
    logp, old, adv, mask = _batch()
    full = logp.detach().clone().requires_grad_()
    policy_loss(full, old, adv, mask, agg="token_mean")[0].backward()

    acc = logp.detach().clone().requires_grad_()
    n_tok = mask.sum()
    for rows in (slice(0, 2), slice(2, 4)):
        terms = policy_loss_terms(acc[rows], old[rows], adv[rows], mask[rows])
        assert terms.shape == mask[rows].shape and torch.all(terms[~mask[rows]] == 0)
        (terms.sum() / n_tok).backward()
    assert torch.allclose(acc.grad, full.grad, atol=1e-7)

    naive = logp.detach().clone().requires_grad_()
    for rows in (slice(0, 2), slice(2, 4)):
        (policy_loss(naive[rows], old[rows], adv[rows], mask[rows])[0] / 2).backward()
    assert not torch.allclose(naive.grad, full.grad, atol=1e-4)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        policy_loss(
            torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3, dtype=torch.bool)
        )
