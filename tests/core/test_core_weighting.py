import pytest
import torch

from eapo.core.quadrants import QUADRANTS, assign_quadrants, entropy_threshold
from eapo.core.weighting import EAPO, WEIGHTINGS, Weighting, build_weighting, register_weighting


def _batch(n_seq=6, length=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    entropy = torch.rand(n_seq, length, generator=g) * 3
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, 0.0])[:n_seq].reshape(-1, 1).expand(n_seq, length)
    seq_ids = torch.arange(n_seq).reshape(-1, 1).expand(n_seq, length) * 10 + 3  # sparse ids on purpose
    lengths = torch.tensor([9, 5, 1, 7, 3, 4])[:n_seq]
    mask = torch.arange(length).reshape(1, -1) < lengths.reshape(-1, 1)
    return entropy.reshape(-1), adv.reshape(-1), seq_ids.reshape(-1), mask.reshape(-1)


def test_registry_has_the_design_weightings():
    assert {"none", "top_entropy", "drop_quadrant", "keep_quadrant", "eapo"} <= set(WEIGHTINGS)


def test_none_is_mask():
    h, a, s, m = _batch()
    w = build_weighting("none")(h, a, s, m, tau=1.0)
    assert torch.equal(w, m.float())


@pytest.mark.parametrize("quadrant", QUADRANTS)
def test_drop_and_keep_quadrant_are_exact(quadrant):
    h, a, s, m = _batch()
    tau = entropy_threshold(h, m, 0.3)
    codes = assign_quadrants(h, a, tau, m)
    target = codes == QUADRANTS.index(quadrant)
    assert target.any()
    drop = build_weighting("drop_quadrant", quadrant=quadrant)(h, a, s, m, tau)
    keep = build_weighting("keep_quadrant", quadrant=quadrant)(h, a, s, m, tau)
    assert torch.all(drop[target] == 0) and torch.all(drop[m & ~target] == 1)
    assert torch.all(keep[target] == 1) and torch.all(keep[~target] == 0)
    assert torch.all(drop[~m] == 0)


def test_tau_none_uses_own_rho():
    h, a, s, m = _batch()
    wfn = build_weighting("top_entropy", rho=0.25)
    assert wfn.needs_tau and wfn.rho == 0.25
    # Expected without the project's threshold: the ceil(0.25·n) largest valid entropies (distinct random values).
    valid = sorted(h[m].tolist(), reverse=True)
    k = -(-len(valid) // 4)
    expected = torch.tensor([float(m[i] and h[i].item() >= valid[k - 1]) for i in range(len(h))])
    w = wfn(h, a, s, m, None)
    assert int(w.sum()) == k
    assert torch.equal(w, expected)
    # A top-entropy weighting with another rho picks another set: the weighting's own rho is what is used.
    assert int(build_weighting("top_entropy", rho=0.5)(h, a, s, m, None).sum()) == -(-len(valid) // 2)


def test_top_entropy_keeps_about_rho():
    h = torch.rand(4000)
    m = torch.rand(4000) > 0.2
    s = torch.arange(4000) // 50
    a = torch.randn(4000)
    for rho in (0.1, 0.2, 0.5):
        w = build_weighting("top_entropy", rho=rho)(h, a, s, m, entropy_threshold(h, m, rho))
        kept = w[m].mean().item()
        assert abs(kept - rho) < 2e-3
        assert torch.all(w[~m] == 0)


def test_eapo_alpha_zero_equals_none():
    h, a, s, m = _batch()
    w0 = build_weighting("eapo", alpha=0.0, phi=0.5)(h, a, s, m, tau=1.0)
    assert torch.equal(w0, build_weighting("none")(h, a, s, m, tau=1.0))


@pytest.mark.parametrize("alpha", [0.3, 1.0])
def test_eapo_hand_computed(alpha):
    # One response, H = (0.2, 1.0, 3.0, pad), φ = 0.5 → c = (0, 1, 3), mean 4/3, r = (0, 0.75, 2.25).
    h = torch.tensor([0.2, 1.0, 3.0, 5.0])
    m = torch.tensor([True, True, True, False])
    s = torch.zeros(4, dtype=torch.long)
    w = build_weighting("eapo", alpha=alpha, phi=0.5)(h, torch.full((4,), -1.0), s, m, None)
    r = torch.tensor([0.0, 0.75, 2.25])
    assert torch.allclose(w[:3], (1 - alpha) + alpha * r) and w[3] == 0


def test_eapo_never_flips_sign_and_preserves_mean_at_alpha_one():
    for seed in range(5):
        h, a, s, m = _batch(seed=seed)
        wfn = build_weighting("eapo", alpha=1.0, phi=0.8)
        w = wfn(h, a, s, m, tau=None)
        assert torch.all(w >= 0)
        a_hat = a * w
        assert torch.all(a_hat * a >= 0)  # Â never has the opposite sign of A
        for sid in s.unique():
            sel = (s == sid) & m
            cap = torch.where(h[sel] >= 0.8, h[sel], torch.zeros_like(h[sel]))
            if cap.sum() > 0:
                assert w[sel].mean().item() == pytest.approx(1.0, abs=1e-6)
            else:
                assert torch.all(w[sel] == 0)


def test_eapo_zero_capacity_response():
    h = torch.tensor([0.1, 0.2, 2.0, 3.0])
    s = torch.tensor([0, 0, 1, 1])
    m = torch.ones(4, dtype=torch.bool)
    w = build_weighting("eapo", alpha=0.4, phi=1.0)(h, torch.ones(4), s, m, None)
    assert torch.allclose(w[:2], torch.tensor([0.6, 0.6]))  # r = 0 → 1 − α
    assert torch.allclose(w[2:], 0.6 + 0.4 * torch.tensor([0.8, 1.2]))


def test_eapo_alpha_neg_applies_to_negative_responses_only():
    h = torch.tensor([0.5, 1.5, 0.5, 1.5])
    s = torch.tensor([0, 0, 1, 1])
    a = torch.tensor([1.0, 1.0, -1.0, -1.0])
    m = torch.ones(4, dtype=torch.bool)
    w = build_weighting("eapo", alpha=1.0, phi=0.0, alpha_neg=0.0)(h, a, s, m, None)
    assert torch.allclose(w, torch.tensor([0.5, 1.5, 1.0, 1.0]))


@pytest.mark.parametrize(
    "name,params,needle",
    [
        ("eapo", {"alpha": 1.5}, "alpha"),
        ("eapo", {"alpha": -0.1}, "alpha"),
        ("eapo", {"alpha": 0.5, "phi": -1.0}, "phi"),
        ("eapo", {"alpha": 0.5, "alpha_neg": 2.0}, "alpha_neg"),
        ("eapo", {"alpha": 0.5, "beta": 1.0}, "beta"),
        ("eapo", {}, "alpha"),
        ("eapo", {"alpha": True}, "alpha"),
        ("top_entropy", {"rho": 0.0}, "rho"),
        ("top_entropy", {"rho": 1.2}, "rho"),
        ("drop_quadrant", {"quadrant": "pos_mid"}, "quadrant"),
        ("keep_quadrant", {}, "quadrant"),
        ("none", {"rho": 0.2}, "rho"),
        ("entropy_bonus", {}, "entropy_bonus"),
    ],
)
def test_invalid_params_raise_naming_them(name, params, needle):
    with pytest.raises(ValueError, match=needle):
        build_weighting(name, **params)


def test_register_custom_weighting():
    name = "test_half_weight"

    @register_weighting(name)
    class Half(Weighting):
        def __init__(self, scale: float = 0.5) -> None:
            self.scale = scale

        def _weights(self, entropy, advantage, seq_ids, mask, tau):
            return torch.full_like(entropy, self.scale)

    try:
        h, a, s, m = _batch()
        w = build_weighting(name)(h, a, s, m, None)
        assert torch.equal(w, 0.5 * m.float())
        with pytest.raises(ValueError, match="already"):
            register_weighting(name)(Half)
    finally:
        WEIGHTINGS.pop(name)


def test_eapo_docstring_is_honest():
    doc = EAPO.__doc__
    assert "2604.11056" in doc and "unpublished" in doc and "our own formulation" in doc
