"""What the core's named parts say about themselves: registries and losses in logs and lineage, the CMI estimators'
smallest shapes (issue 16)."""

from __future__ import annotations

import pytest

from eapo.core.cmi import CMI_ESTIMATORS, min_shape
from eapo.core.losses import build_policy_loss
from eapo.core.registry import Registry


def test_registry_repr_names_its_kind_and_items_in_order():
    reg: Registry[int] = Registry("widget")
    assert repr(reg) == "Registry('widget': )"
    reg.register("b")(1)
    reg.register("a")(2)
    assert repr(reg) == "Registry('widget': b, a)"


def test_policy_loss_repr_shows_the_class_and_its_parameters():
    assert repr(build_policy_loss("ppo_clip")) == "PPOClip()"
    loss = build_policy_loss("clip_cov", clip_ratio=0.5, clip_cov_lb=-1.0, clip_cov_ub=2.0)
    assert repr(loss) == "ClipCov(clip_ratio=0.5, clip_cov_lb=-1.0, clip_cov_ub=2.0)"


@pytest.mark.parametrize("name", sorted(CMI_ESTIMATORS))
def test_min_shape_is_the_estimators_own_minimum(name):
    est = CMI_ESTIMATORS[name]
    assert min_shape(name) == (est.min_k, est.min_m)
    assert min_shape("jackknife") == (2, 2)


def test_unknown_name_reads_as_its_message_not_its_repr():
    from eapo.core.registry import UnknownName

    assert str(UnknownName("no such loss 'x'")) == "no such loss 'x'"
    assert str(UnknownName()) == ""
    with pytest.raises(UnknownName) as exc:
        Registry("widget")["nope"]
    assert str(exc.value) == exc.value.args[0] and not str(exc.value).startswith('"')


def test_registry_pop_removes_and_returns_or_gives_the_default():
    reg: Registry[int] = Registry("widget")
    reg.register("a")(1)
    assert reg.pop("b", 7) == 7 and reg.pop("b", None) is None
    assert reg.pop("a", 7) == 1 and "a" not in reg
    with pytest.raises(KeyError):
        reg.pop("a")


def test_eapo_parameters_are_checked_by_name():
    from eapo.core.weighting import build_weighting

    for kw, name in (({"alpha": 1.5}, "alpha"), ({"alpha": 0.5, "phi": -1.0}, "phi"),
                     ({"alpha": 0.5, "alpha_neg": 2.0}, "alpha_neg")):
        with pytest.raises(ValueError, match=rf"^parameter '{name}' must be in \["):
            build_weighting("eapo", **kw)
    with pytest.raises(ValueError, match=r"^parameter 'phi' must be in \[0.0, inf\), got inf$"):
        build_weighting("eapo", alpha=0.5, phi=float("inf"))
    assert build_weighting("eapo", alpha=0.5, phi=1e30).phi == 1e30


def test_build_policy_loss_does_not_take_self_as_a_parameter():
    with pytest.raises(ValueError, match=r"has no parameter 'self'"):
        build_policy_loss("kl_cov", self=1)


def test_weighting_checks_shapes_and_real_parameters_and_keeps_a_float_dtype():
    import torch

    from eapo.core.weighting import build_weighting

    with pytest.raises(ValueError, match=r"^parameter 'alpha' must be a real number, got '0.5'$"):
        build_weighting("eapo", alpha="0.5")
    w = build_weighting("eapo", alpha=0.5)
    h, a = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 1.0, -1.0])
    ids, mask = torch.tensor([0, 0, 1]), torch.ones(3, dtype=torch.bool)
    for bad_ids, bad_mask in ((ids[:2], mask), (ids, mask[:2])):
        with pytest.raises(ValueError, match=r"^entropy \(3,\), seq_ids \(\d,\) and mask \(\d,\) must have the same "
                                             r"shape$"):
            w(h, a, bad_ids, bad_mask, None)
    assert w(h, a, ids, mask, None).dtype == torch.float32
    assert w(h.double(), a, ids, mask, None).dtype == torch.float64
    assert w(h.to(torch.bfloat16), a, ids, mask, None).dtype == torch.float32
    assert w(torch.tensor([1, 2, 3]), a, ids, mask, None).dtype == torch.float32


def test_entropy_threshold_names_mismatched_shapes_and_reads_half_precision():
    import torch

    from eapo.core.quadrants import entropy_threshold

    with pytest.raises(ValueError, match=r"^mask \(2,\) does not match entropy \(3,\)$"):
        entropy_threshold(torch.ones(3), torch.ones(2, dtype=torch.bool), 0.5)
    h = torch.tensor([0.5, 3.0, 1.0, 2.0])
    assert entropy_threshold(h.to(torch.bfloat16), None, 0.5) == entropy_threshold(h, None, 0.5) == 2.0
