import math

import pytest
import torch

from eapo.core.losses import AGGREGATIONS, Aggregation, aggregate, k3_kl, policy_loss, policy_loss_terms


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


# ---------------------------------------------------------------------------------------------------------------------
# Policy losses by name: ppo_clip, clip_cov, kl_cov, entropy_bonus (hand-computed examples)


def test_ppo_clip_by_name_equals_policy_loss_terms():
    from eapo.core.losses import DEFAULT_POLICY_LOSS, build_policy_loss

    assert DEFAULT_POLICY_LOSS == "ppo_clip"
    logp, old, adv, mask = _batch()
    ref = old + 0.1 * torch.randn_like(old)
    want, want_parts = policy_loss_terms(logp, old, adv, mask, 0.2, 0.28, ref_logp=ref, kl_coef=0.3,
                                         return_parts=True)
    got, parts = build_policy_loss("ppo_clip")(logp, old, adv, mask, clip_low=0.2, clip_high=0.28, ref_logp=ref,
                                               kl_coef=0.3)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert torch.equal(parts["clipped"], want_parts["clipped"]) and not parts["selected"].any()


def _cov_example():
    # One response, 4 valid tokens. Â = [3, 1, −1, −3] (mean 0); log π = [−0.5, −1.5, −1.5, −2.5] (mean −1.5), so
    # cov = Â·(log π + 1.5) = [3, 0, 0, 3]. Token 3 has old log π = log π + 0.5: r = e^−0.5 ≈ 0.607 < 1 − 0.2 with
    # Â < 0, so PPO clips it (−clip(r)·Â = 2.4 > −r·Â ≈ 1.82). Tokens 0-2 are on-policy (r = 1).
    logp = torch.tensor([[-0.5, -1.5, -1.5, -2.5]], requires_grad=True)
    old = torch.tensor([[-0.5, -1.5, -1.5, -2.0]])
    adv = torch.tensor([[3.0, 1.0, -1.0, -3.0]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    return logp, old, adv, mask


def test_clip_cov_hand_computed():
    from eapo.core.losses import build_policy_loss

    logp, old, adv, mask = _cov_example()
    loss = build_policy_loss("clip_cov")  # paper defaults: ratio 2e-4 → max(1, ⌊2e-4·4⌋) = 1 token, cov in (1, 5)
    assert loss.params == {"clip_ratio": 2e-4, "clip_cov_lb": 1.0, "clip_cov_ub": 5.0}
    terms, parts = loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28, generator=torch.Generator().manual_seed(0))
    # Eligible: cov in (1, 5) and not PPO-clipped → token 0 only (token 3 is clipped). It is detached (loss 0).
    assert parts["selected"].tolist() == [[True, False, False, False]]
    assert parts["clipped"].tolist() == [[False, False, False, True]]
    torch.testing.assert_close(terms, torch.tensor([[0.0, -1.0, 1.0, 2.4]]))
    terms.sum().backward()
    # d(−r·Â)/d log π = −r·Â on unclipped tokens; 0 on the selected and on the clipped token.
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -1.0, 1.0, 0.0]]))


def test_clip_cov_draws_the_documented_number_of_tokens_reproducibly():
    from eapo.core.losses import build_policy_loss

    torch.manual_seed(0)
    adv = torch.tensor([[2.0] * 10 + [-2.0] * 10])
    logp = torch.cat([torch.full((1, 10), -0.2), torch.full((1, 10), -2.2)], dim=1)  # cov = 2·1 = 2 on every token
    mask = torch.ones_like(adv, dtype=torch.bool)
    loss = build_policy_loss("clip_cov", clip_ratio=0.25)  # ⌊0.25·20⌋ = 5 of the 20 eligible tokens
    picks = [loss(logp, logp, adv, mask, generator=torch.Generator().manual_seed(s))[1]["selected"] for s in (1, 1, 2)]
    assert [int(p.sum()) for p in picks] == [5, 5, 5]
    assert torch.equal(picks[0], picks[1]) and not torch.equal(picks[0], picks[2])
    # Bounds exclude: with cov ≈ 2 everywhere and lb = 2.5, nothing is eligible → plain PPO.
    narrow = build_policy_loss("clip_cov", clip_ratio=0.25, clip_cov_lb=2.5, clip_cov_ub=5.0)
    assert not narrow(logp, logp, adv, mask)[1]["selected"].any()


def test_kl_cov_hand_computed():
    from eapo.core.losses import build_policy_loss

    # Â = [3, 1, −1, −3] (mean 0); log π = [−0.5, −1.5, −1.5, −2.0] (mean −1.375), centred [0.875, −0.125, −0.125,
    # −0.625] → cov = [2.625, −0.125, 0.125, 1.875]; the top-1 token is token 0.
    logp = torch.tensor([[-0.5, -1.5, -1.5, -2.0]], requires_grad=True)
    old = torch.tensor([[-0.6, -1.5, -1.5, -1.5]])  # log r = [0.1, 0, 0, −0.5]
    adv = torch.tensor([[3.0, 1.0, -1.0, -3.0]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    loss = build_policy_loss("kl_cov")  # verl defaults: ratio 2e-4 → max(1, 0) = 1 token, coef 1
    assert loss.params == {"kl_cov_ratio": 2e-4, "ppo_kl_coef": 1.0}
    terms, parts = loss(logp, old, adv, mask)
    assert parts["selected"].tolist() == [[True, False, False, False]]
    r0, r3 = math.exp(0.1), math.exp(-0.5)
    # Token 0: −r·Â + |log r| = −3e^0.1 + 0.1; token 3 is NOT clipped (KL-Cov has no ratio clip): −r·Â = 3e^−0.5.
    torch.testing.assert_close(terms, torch.tensor([[-3 * r0 + 0.1, -1.0, 1.0, 3 * r3]]))
    terms.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-3 * r0 + 1.0, -1.0, 1.0, 3 * r3]]))
    two = build_policy_loss("kl_cov", kl_cov_ratio=0.5)(logp, old, adv, mask)[1]["selected"]
    assert two.tolist() == [[True, False, False, True]]  # the two largest covariances


def test_entropy_bonus_hand_computed_and_raises_entropy():
    from eapo.core.entropy import logprob_entropy_from_logits
    from eapo.core.losses import build_policy_loss

    loss = build_policy_loss("entropy_bonus")
    assert loss.params == {"coef": 1e-3} and loss.needs_entropy
    logp = torch.tensor([[-1.0, -2.0, -0.5]])
    adv = torch.tensor([[1.0, -1.0, 1.0]])
    mask = torch.tensor([[True, True, False]])
    ent = torch.tensor([[2.0, 0.5, 9.0]], requires_grad=True)
    terms, _ = build_policy_loss("entropy_bonus", coef=0.1)(logp, logp, adv, mask, entropy=ent)
    # r = 1: −Â − 0.1·H on valid tokens, 0 on the masked one.
    torch.testing.assert_close(terms, torch.tensor([[-1.0 - 0.2, 1.0 - 0.05, 0.0]]), rtol=0, atol=1e-7)
    terms.sum().backward()
    torch.testing.assert_close(ent.grad, torch.tensor([[-0.1, -0.1, 0.0]]))
    with pytest.raises(ValueError, match="needs the per-token entropy"):
        loss(logp, logp, adv, mask)
    # With Â = 0 only the bonus acts: a gradient step on the logits raises the entropy.
    logits = torch.randn(1, 3, 11, generator=torch.Generator().manual_seed(0)) * 3
    logits.requires_grad_(True)
    targets = torch.tensor([[1, 2, 3]])
    lp, h = logprob_entropy_from_logits(logits, targets)
    zero = torch.zeros_like(lp)
    terms, _ = build_policy_loss("entropy_bonus", coef=1.0)(lp, lp.detach(), zero, torch.ones_like(zero).bool(),
                                                             entropy=h)
    terms.sum().backward()
    with torch.no_grad():
        _, h_after = logprob_entropy_from_logits(logits - 0.5 * logits.grad, targets)
    assert (h_after > h.detach()).all()


def test_policy_loss_registry_validates():
    from eapo.core.losses import POLICY_LOSSES, build_policy_loss

    assert {"ppo_clip", "clip_cov", "kl_cov", "entropy_bonus"} <= set(POLICY_LOSSES)
    with pytest.raises(ValueError, match="unknown policy loss"):
        build_policy_loss("dpo")
    with pytest.raises(ValueError, match="no parameter 'ratio'"):
        build_policy_loss("clip_cov", ratio=0.1)
    with pytest.raises(ValueError, match=r"^parameter 'coef' must be a number in \(0, inf\], got -1.0$"):
        build_policy_loss("entropy_bonus", coef=-1.0)
    with pytest.raises(ValueError, match="clip_cov_lb"):
        build_policy_loss("clip_cov", clip_cov_lb=5.0, clip_cov_ub=1.0)
    with pytest.raises(ValueError, match="kl_coef > 0 needs ref_logp"):
        build_policy_loss("kl_cov")(*_cov_example(), kl_coef=0.1)


@pytest.mark.parametrize("name", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_aggregation_totals_over_micro_batches_give_the_batch_mean(name):
    """What the trainer's gradient accumulation relies on: Σ over micro-batches of ``total`` / the whole batch's
    unit count (``count_lengths``) equals the aggregation of the whole batch."""
    agg = AGGREGATIONS[name]
    assert isinstance(agg, Aggregation)
    g = torch.Generator().manual_seed(0)
    values = torch.randn(5, 6, generator=g, dtype=torch.float64)
    lengths = [6, 0, 3, 1, 4]  # an empty response counts as no token and no sequence
    mask = torch.arange(6)[None, :] < torch.tensor(lengths)[:, None]
    whole = agg(values, mask, 8)
    parts = [slice(0, 2), slice(2, 5)]
    split = sum(agg.total(values[p], mask[p], 8) for p in parts) / agg.count_lengths(lengths)
    assert float(split) == pytest.approx(float(whole), rel=1e-12)
    assert agg.count_lengths(lengths) == float(agg.count(mask)) == (14.0 if agg.unit == "token" else 4.0)


@pytest.mark.parametrize("name", ["ppo_clip", "clip_cov", "kl_cov", "entropy_bonus"])
def test_every_policy_loss_reports_ratio_clipped_and_selected(name):
    """The parts the trainer logs (clip fraction, approx. KL from the ratio) have the same names for every loss."""
    from eapo.core.losses import build_policy_loss

    logp = torch.tensor([[-0.5, -1.0, -2.0]])
    old = torch.tensor([[-1.0, -1.0, -1.0]])
    adv = torch.tensor([[1.0, -1.0, 1.0]])
    mask = torch.tensor([[True, True, False]])
    _, parts = build_policy_loss(name)(logp, old, adv, mask, entropy=torch.ones(1, 3))
    assert set(parts) == {"ratio", "clipped", "selected"}
    torch.testing.assert_close(parts["ratio"][mask], torch.exp(logp - old)[mask])
    assert parts["clipped"].dtype == torch.bool and parts["selected"].dtype == torch.bool
    assert parts["clipped"].shape == parts["selected"].shape == mask.shape


def test_kl_cov_log_ratio_is_clamped_at_plus_minus_20():
    """An extreme log-ratio (a token whose probability moved by e^±25) is clamped to ±20 before exp: the ratio and
    the KL penalty stay finite and are those of ±20."""
    from eapo.core.losses import build_policy_loss

    logp = torch.tensor([[-0.5, -30.0, -1.0]])
    old = torch.tensor([[-25.5, -5.0, -1.0]])  # log r = [25, −25, 0]
    adv = torch.tensor([[1.0, -1.0, 0.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    terms, parts = build_policy_loss("kl_cov", kl_cov_ratio=1.0)(logp, old, adv, mask)
    torch.testing.assert_close(parts["ratio"], torch.tensor([[math.exp(20.0), math.exp(-20.0), 1.0]]))
    # All three tokens selected (ratio 1.0): −r·Â + |log r| with |log r| clamped to 20.
    torch.testing.assert_close(terms, torch.tensor([[-math.exp(20.0) + 20.0, math.exp(-20.0) + 20.0, 0.0]]))


def test_token_covariance_centres_on_the_valid_tokens_only():
    from eapo.core.losses import token_covariance

    # Valid tokens 0, 1, 3 (mean Â = 2, mean log π = −1); token 2 is padding with values that would move the means.
    adv = torch.tensor([[1.0, 2.0, 100.0, 3.0]])
    logp = torch.tensor([[-2.0, -1.0, 50.0, 0.0]])
    mask = torch.tensor([[True, True, False, True]])
    cov = token_covariance(adv, logp, mask)
    assert cov[0, :2].tolist() == [1.0, 0.0] and cov[0, 3].item() == 1.0
    assert cov[0, 2].item() == -math.inf  # never selected
    # One valid token: it is its own mean, covariance 0.
    one = token_covariance(torch.tensor([[4.0, 9.0]]), torch.tensor([[-3.0, 1.0]]), torch.tensor([[True, False]]))
    assert one.tolist() == [[0.0, -math.inf]]
    # No valid token: all −inf, no division by zero.
    none = token_covariance(torch.tensor([[1.0]]), torch.tensor([[-1.0]]), torch.tensor([[False]]))
    assert none.tolist() == [[-math.inf]]


def test_seq_mean_token_sum_norm_accepts_a_norm_length_of_one():
    values, mask = torch.tensor([[1.0, 2.0], [4.0, 0.0]]), torch.tensor([[True, True], [True, False]])
    total = AGGREGATIONS["seq_mean_token_sum_norm"].total(values, mask, 1)
    assert total.item() == 3.0 + 4.0
    with pytest.raises(ValueError):
        AGGREGATIONS["seq_mean_token_sum_norm"].total(values, mask, 0)


def test_clip_cov_validates_its_parameters_by_name():
    from eapo.core.losses import build_policy_loss

    assert build_policy_loss("clip_cov", clip_ratio=1.0).clip_ratio == 1.0
    with pytest.raises(ValueError, match=r"^parameter 'clip_ratio' must be a number in \(0, 1.0\], got 1.5$"):
        build_policy_loss("clip_cov", clip_ratio=1.5)
    for key in ("clip_cov_lb", "clip_cov_ub"):
        for bad in (True, "1", math.inf, math.nan):
            with pytest.raises(ValueError, match=rf"^parameter '{key}' must be a finite number, got "):
                build_policy_loss("clip_cov", **{key: bad})
    with pytest.raises(ValueError, match=r"^clip_cov_lb \(2.0\) must be < clip_cov_ub \(2.0\)$"):
        build_policy_loss("clip_cov", clip_cov_lb=2.0, clip_cov_ub=2.0)
    assert build_policy_loss("clip_cov", clip_cov_lb=-1, clip_cov_ub=0).params["clip_cov_lb"] == -1.0


def test_clip_cov_bounds_are_exclusive_and_at_least_one_token_is_taken():
    from eapo.core.losses import build_policy_loss

    logp, old, adv, mask = _cov_example()  # cov = [3, 0, 0, 3], token 3 PPO-clipped
    gen = torch.Generator().manual_seed(0)
    at_lb = build_policy_loss("clip_cov", clip_cov_lb=3.0, clip_cov_ub=5.0)(logp, old, adv, mask, generator=gen)
    at_ub = build_policy_loss("clip_cov", clip_cov_lb=1.0, clip_cov_ub=3.0)(logp, old, adv, mask, generator=gen)
    assert not at_lb[1]["selected"].any() and not at_ub[1]["selected"].any()
    # Four eligible tokens on-policy, clip_ratio·N < 1: exactly one is taken, not two.
    adv4 = torch.tensor([[2.0, 2.0, -2.0, -2.0]])
    lp4 = torch.tensor([[-0.2, -0.2, -2.2, -2.2]])  # cov = 2 everywhere
    sel = build_policy_loss("clip_cov")(lp4, lp4, adv4, mask, generator=gen)[1]["selected"]
    assert int(sel.sum()) == 1


@pytest.mark.parametrize("name", ["ppo_clip", "clip_cov", "kl_cov", "entropy_bonus"])
@pytest.mark.parametrize("bad", ["logp", "old_logp", "adv_tokens", "mask", "ref_logp", "entropy"])
def test_a_named_loss_refuses_any_argument_of_another_shape(name, bad):
    from eapo.core.losses import build_policy_loss

    args = {k: torch.zeros(1, 3) for k in ("logp", "old_logp", "adv_tokens", "ref_logp", "entropy")}
    args["mask"] = torch.ones(1, 3, dtype=torch.bool)
    args[bad] = args[bad][:, :2]
    with pytest.raises(ValueError, match=rf"^expected equal \[B, T\] shapes, got .*'{bad}': \(1, 2\)"):
        build_policy_loss(name)(args["logp"], args["old_logp"], args["adv_tokens"], args["mask"],
                                ref_logp=args["ref_logp"], kl_coef=0.1, entropy=args["entropy"])


def test_positive_parameters_refuse_booleans_zero_and_values_above_their_bound():
    from eapo.core.losses import build_policy_loss

    for bad in (True, 0, 0.0, -1e-9, "0.5", 1.5):
        with pytest.raises(ValueError, match=r"^parameter 'kl_cov_ratio' must be a number in \(0, 1.0\]"):
            build_policy_loss("kl_cov", kl_cov_ratio=bad)
    with pytest.raises(ValueError, match=r"^parameter 'ppo_kl_coef' must be a number in \(0, inf\], got 0$"):
        build_policy_loss("kl_cov", ppo_kl_coef=0)
    assert build_policy_loss("kl_cov", kl_cov_ratio=1).kl_cov_ratio == 1.0
    assert build_policy_loss("kl_cov", ppo_kl_coef=1e9).ppo_kl_coef == 1e9  # no upper bound


def test_policy_loss_reports_the_kl_with_the_same_aggregation_and_length_as_the_loss():
    logp = torch.tensor([[-1.0, -2.0, -1.5], [-0.5, -1.0, -3.0]])
    ref = torch.tensor([[-1.5, -1.0, -1.0], [-1.0, -1.0, -1.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    adv = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]])
    loss, metrics = policy_loss(logp, logp.detach(), adv, mask, agg="seq_mean_token_sum_norm", norm_len=8,
                                ref_logp=ref, kl_coef=0.5)
    k3 = k3_kl(logp, ref)
    want_kl = aggregate(k3, mask, "seq_mean_token_sum_norm", 8)
    assert metrics["kl"] == pytest.approx(float(want_kl))
    assert float(loss) == pytest.approx(metrics["pg_loss"] + 0.5 * metrics["kl"], rel=1e-6)


def test_aggregate_defaults_to_token_mean_and_refuses_other_shapes():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[True, False, False], [False, False, False]])
    assert aggregate(values, mask).item() == 1.0  # one valid token: its value, not half of it
    assert aggregate(values, mask) == aggregate(values, mask, "token_mean")
    assert aggregate(values, mask, "seq_mean_token_mean").item() == 1.0
    v3 = values.reshape(1, 2, 3)
    with pytest.raises(ValueError, match=r"^expected values and mask of equal shape \[B, T\], got \(1, 2, 3\), "
                                         r"\(1, 2, 3\)$"):
        aggregate(v3, mask.reshape(1, 2, 3))
    with pytest.raises(ValueError, match=r"got \(2, 3\), \(3, 2\)$"):
        aggregate(values, mask.reshape(3, 2))


@pytest.mark.parametrize("bad", ["logp", "old_logp", "adv_tokens", "mask", "ref_logp"])
def test_policy_loss_terms_refuses_any_argument_of_another_shape(bad):
    args = {k: torch.zeros(1, 3) for k in ("logp", "old_logp", "adv_tokens", "ref_logp")}
    args["mask"] = torch.ones(1, 3, dtype=torch.bool)
    args[bad] = args[bad][:, :2]
    with pytest.raises(ValueError, match=rf"^expected equal \[B, T\] shapes, got .*'{bad}': \(1, 2\)"):
        policy_loss_terms(args["logp"], args["old_logp"], args["adv_tokens"], args["mask"], ref_logp=args["ref_logp"],
                          kl_coef=0.1)


def test_ppo_clip_defaults_zero_clip_and_log_ratio_clamp():
    from eapo.core.losses import _check_kl, build_policy_loss

    logp = torch.tensor([[-0.5, -1.0, -1.0]])
    old = torch.tensor([[-1.0, -1.0, -0.5]])  # r = [e^0.5, 1, e^-0.5]: both ends outside 1 ± 0.28
    adv = torch.tensor([[1.0, 1.0, -1.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    by_name, _ = build_policy_loss("ppo_clip")(logp, old, adv, mask)  # the defaults: ε_low 0.2, ε_high 0.28
    torch.testing.assert_close(by_name, policy_loss_terms(logp, old, adv, mask, 0.2, 0.28))
    torch.testing.assert_close(by_name, torch.tensor([[-1.28, -1.0, 0.8]]))
    # ε = 0 is allowed (every off-policy token is clipped); a negative ε is not.
    zero = policy_loss_terms(logp, old, adv, mask, 0.0, 0.0)
    torch.testing.assert_close(zero, torch.tensor([[-1.0, -1.0, 1.0]]))
    for lo, hi in ((-0.1, 0.2), (0.2, -0.1)):
        with pytest.raises(ValueError):
            policy_loss_terms(logp, old, adv, mask, lo, hi)
    # Log-ratios beyond ±20 are clamped before exp (reported ratio e^±20).
    far_lp, far_old = torch.tensor([[0.0, -30.0]]), torch.tensor([[-25.0, -5.0]])
    _, parts = build_policy_loss("ppo_clip")(far_lp, far_old, torch.ones(1, 2), torch.ones(1, 2, dtype=torch.bool))
    torch.testing.assert_close(parts["ratio"], torch.tensor([[math.exp(20.0), math.exp(-20.0)]]))
    with pytest.raises(ValueError, match=r"^kl_coef > 0 needs ref_logp$"):
        _check_kl(0.1, None)
