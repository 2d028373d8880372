"""An independent check of one real training step on the tiny random Llama (issue 16).

``train`` runs one step for real (sampling, reward, annotation, update). Spies record what the step works on and
what the update receives: the samples (``trainer.sample``), the rewards (the reward function), every minibatch handed
to ``accumulate_gradients`` with its denominator and returned sums, and every call of ``policy_loss_terms`` inside it.
The test then recomputes, in plain Python and without the project's math:

- each response's advantage (R − mean)/(std + ε) over its own group (unbiased std, 0 for a group without contrast),
  times the variant's token weight w, and compares it with the Â the update receives, token by token: rewarded
  responses positive, the others negative;
- the per-token clipped surrogate from the log-probs the update saw, and the logged loss as Σℓ over the
  *minibatch's* denominator (tokens, or non-empty responses), averaged over the optimizer steps;
- τ, the quadrant counts and the gradient shares Σ|Â|·‖e_y − π‖ with ‖e_y − π‖ = sqrt(1 − 2p + Σπ²) from p = exp(log p).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from eapo import trainer as trainer_mod
from eapo.config import ModelConfig, RewardConfig, TrainConfig, VariantConfig
from eapo.data import generate
from eapo.forward import Rollout
from eapo.policy import Policy, load_policy
from tests.test_trainer import _one_thread, parity_reward  # noqa: F401  (_one_thread: an autouse fixture)

ROOT = Path(__file__).resolve().parents[1]
MODEL_CFG = ModelConfig(name_or_path="tiny-random-llama", threads=1)
REWARD_CFG = RewardConfig(workers=1)
EPS = 1e-6  # the advantage's ε (grpo's default)
G = 4
# One step, two minibatches of four responses, micro-batches of two: the loss denominator of a minibatch is then
# visibly not the step's, and gradient accumulation runs.
CFG = TrainConfig(steps=1, prompts_per_step=2, group_size=G, max_new_tokens=8, batch_size=8, micro_batch_size=2,
                  minibatches=2, lr=1e-3, checkpoint_every=1, seed=0, rho=0.25)


@pytest.fixture(scope="module")
def base() -> Policy:
    """The tiny random Llama with its (tied) embedding scaled ×6: its next-token entropies then spread over
    ≈ 9.5-10.3 nats instead of 10.790 ± 0.0003, so a floor φ and the quantile τ split the tokens for real."""
    pol = load_policy("tiny-random-llama", cache_dir=ROOT / ".cache" / "models", seed=0)
    model = copy.deepcopy(pol.model)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(6.0)
    return Policy(model, pol.tokenizer, dict(pol.info))


@pytest.fixture(scope="module")
def prompts() -> list[dict]:
    return [dataclasses.asdict(r) for r in generate(12, families=("add",), levels=(1,), seed=0)]


@dataclasses.dataclass
class Spy:
    samples: list = dataclasses.field(default_factory=list)
    rewards: list[float] = dataclasses.field(default_factory=list)
    minibatches: list[dict] = dataclasses.field(default_factory=list)


def run_one_step(base, prompts, tmp_path, monkeypatch, variant, cfg) -> tuple[dict, Spy]:
    spy = Spy()
    real_sample, real_acc, real_terms = trainer_mod.sample, trainer_mod.accumulate_gradients, \
        trainer_mod.policy_loss_terms

    def sample_spy(*a, **kw):
        out = real_sample(*a, **kw)
        spy.samples.extend(out)
        return out

    def reward_spy(texts, golds):
        r = parity_reward(texts, golds)
        spy.rewards.extend(r)
        return r

    def acc_spy(model, rollouts, cfg_, *, denom, **kw):
        entry = {"rollouts": [copy.deepcopy(r) for r in rollouts], "denom": denom, "calls": []}
        spy.minibatches.append(entry)
        stats = real_acc(model, rollouts, cfg_, denom=denom, **kw)
        entry["stats"] = dict(stats)
        return stats

    def terms_spy(logp, old_logp, adv, mask, *a, **kw):
        out = real_terms(logp, old_logp, adv, mask, *a, **kw)
        terms = out[0] if isinstance(out, tuple) else out
        spy.minibatches[-1]["calls"].append({"logp": logp.detach().double(), "old_logp": old_logp.double(),
                                             "adv": adv.double(), "mask": mask.bool(), "terms": terms.detach()})
        return out

    monkeypatch.setattr(trainer_mod, "sample", sample_spy)
    monkeypatch.setattr(trainer_mod, "accumulate_gradients", acc_spy)
    monkeypatch.setattr(trainer_mod, "policy_loss_terms", terms_spy)
    policy = Policy(copy.deepcopy(base.model), base.tokenizer, dict(base.info))
    res = trainer_mod.train(policy, prompts, cfg, "v", variant, MODEL_CFG, REWARD_CFG, tmp_path,
                            reward_fn=reward_spy)
    return res.steps[0], spy


# ----------------------------------------------------------------------------------------------------------------------
# The expectation, computed independently


def group_advantages(rewards: list[float], g: int) -> list[float]:
    out = []
    for k in range(0, len(rewards), g):
        grp = rewards[k:k + g]
        mean = sum(grp) / len(grp)
        if max(grp) == min(grp):
            out += [0.0] * len(grp)
            continue
        std = math.sqrt(sum((x - mean) ** 2 for x in grp) / (len(grp) - 1))
        out += [(x - mean) / (std + EPS) for x in grp]
    return out


def token_weights(variant: VariantConfig, entropies: list[float], adv: float) -> list[float]:
    if variant.weighting == "none":
        return [1.0] * len(entropies)
    assert variant.weighting == "eapo"
    cap = [h if h >= variant.phi else 0.0 for h in entropies]
    mean = sum(cap) / len(cap)
    r = [c / mean if mean > 0 else 0.0 for c in cap]
    alpha = variant.alpha_neg if (variant.alpha_neg is not None and adv < 0) else variant.alpha
    return [(1 - alpha) + alpha * x for x in r]


def surrogate(logp: float, old: float, a: float, lo: float, hi: float) -> float:
    ratio = math.exp(logp - old)
    return -min(ratio * a, min(max(ratio, 1 - lo), 1 + hi) * a)


def k_largest(values: list[float], rho: float) -> float:
    k = max(1, math.ceil(round(rho * len(values), 9)))
    return sorted(values, reverse=True)[k - 1]


VARIANTS = {
    "grpo-token_mean": (VariantConfig(weighting="none"), "token_mean"),
    # φ inside the sharpened model's entropy range, so that some tokens have no capacity.
    "eapo-seq_mean_token_mean": (VariantConfig(weighting="eapo", alpha=0.5, phi=10.15, alpha_neg=0.25),
                                 "seq_mean_token_mean"),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_one_training_step_against_an_independent_computation(base, prompts, tmp_path, monkeypatch, name):
    variant, agg = VARIANTS[name]
    cfg = dataclasses.replace(CFG, agg=agg)
    row, spy = run_one_step(base, prompts, tmp_path, monkeypatch, variant, cfg)
    samples, rewards = spy.samples, spy.rewards
    assert len(samples) == len(rewards) == cfg.prompts_per_step * G
    assert all(s.prompt_index == i // G for i, s in enumerate(samples))

    # The premise: at least one group mixes rewards, so advantages of both signs reach the update.
    adv = group_advantages(rewards, G)
    assert any(a > 0 for a in adv) and any(a < 0 for a in adv)

    # 1. Â per token = A_i · w_{i,t}, for every response, as the update's rollouts carry it.
    expected, all_w = {}, []
    for s, r, a in zip(samples, rewards, adv):
        w = token_weights(variant, list(s.entropies), a)
        all_w += w
        expected[(tuple(s.prompt_ids), tuple(s.response_ids))] = (r, [a * x for x in w], list(s.logprobs))
    if variant.weighting == "eapo":  # the premise: the weights are not trivially 1, some tokens have no capacity
        assert len({round(x, 6) for x in all_w}) > 4 and min(all_w) in (0.5, 0.75)
    seen = Counter()
    for mb in spy.minibatches:
        for ro in mb["rollouts"]:
            key = (tuple(ro.prompt_ids), tuple(ro.response_ids))
            assert key in expected
            seen[key] += 1
            r, adv_hat, old = expected[key]
            assert ro.adv_tokens == pytest.approx(adv_hat, rel=1e-5, abs=1e-6)
            assert ro.old_logp == pytest.approx(old, abs=1e-7)
            if max(rewards) != min(rewards) and any(x != 0 for x in adv_hat):
                assert all((x > 0) if r == 1.0 else (x < 0) for x in ro.adv_tokens), (r, ro.adv_tokens)
    assert sum(seen.values()) == len(samples) * cfg.ppo_epochs  # every response once per epoch

    # 2. What policy_loss_terms receives is exactly the minibatch's Â and old log-probs (in any row order), and the
    #    logged loss is Σℓ over the minibatch's denominator.
    assert len(spy.minibatches) == cfg.minibatches * cfg.ppo_epochs
    total_tokens = sum(len(s.response_ids) for s in samples)
    losses = []
    for mb in spy.minibatches:
        ros = mb["rollouts"]
        received_adv, received_old = [], []
        independent = 0.0
        for call in mb["calls"]:
            m = call["mask"]
            for b in range(m.shape[0]):
                sel = m[b]
                received_adv.append(tuple(round(x, 5) for x in call["adv"][b][sel].tolist()))
                received_old.append(tuple(round(x, 5) for x in call["old_logp"][b][sel].tolist()))
                ell = [surrogate(lp, o, a, cfg.clip_low, cfg.clip_high) for lp, o, a in
                       zip(call["logp"][b][sel].tolist(), call["old_logp"][b][sel].tolist(),
                           call["adv"][b][sel].tolist())]
                if agg == "token_mean":
                    independent += sum(ell)
                elif ell:
                    independent += sum(ell) / len(ell)
                # the function's own terms agree with the hand-computed surrogate (and are 0 off the mask)
                assert call["terms"][b][sel].tolist() == pytest.approx(ell, rel=1e-5, abs=1e-7)
                assert torch.all(call["terms"][b][~sel] == 0)
        assert Counter(received_adv) == Counter(tuple(round(x, 5) for x in r.adv_tokens) for r in ros)
        assert Counter(received_old) == Counter(tuple(round(x, 5) for x in r.old_logp) for r in ros)
        if agg == "token_mean":
            denom = sum(len(r.response_ids) for r in ros)
            assert denom < total_tokens  # the minibatch's tokens, not the step's
        else:
            denom = sum(1 for r in ros if r.response_ids)
            assert denom < len(samples)
        assert mb["denom"] == denom
        assert mb["stats"]["tokens"] == sum(len(r.response_ids) for r in ros)
        assert mb["stats"]["loss"] == pytest.approx(independent / denom, rel=1e-5, abs=1e-7)
        losses.append(independent / denom)
    assert row["loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-5, abs=1e-7)

    # 3. Sample statistics, τ, quadrant counts and the gradient shares from p = exp(log p) and Σπ².
    ent = [h for s in samples for h in s.entropies]
    assert row["reward_mean"] == pytest.approx(sum(rewards) / len(rewards))
    assert row["accuracy"] == pytest.approx(sum(r == 1.0 for r in rewards) / len(rewards))
    groups = [rewards[k:k + G] for k in range(0, len(rewards), G)]
    assert row["mixed_groups"] == pytest.approx(sum(max(g) != min(g) for g in groups) / len(groups))
    assert row["tokens"] == total_tokens
    assert row["entropy_mean"] == pytest.approx(sum(ent) / len(ent), rel=1e-6)
    tau = k_largest(ent, cfg.rho)
    assert row["tau"] == tau
    counts = Counter()
    mass, wmass = Counter(), Counter()
    for s, a in zip(samples, adv):
        w = token_weights(variant, list(s.entropies), a)
        for h, lp, sp2, wt in zip(s.entropies, s.logprobs, s.sum_p_sq, w):
            if a == 0:
                continue
            q = ("pos_" if a > 0 else "neg_") + ("high" if h >= tau else "low")
            g = math.sqrt(max(1.0 - 2.0 * math.exp(lp) + sp2, 0.0))
            counts[q] += 1
            mass[q] += abs(a) * g
            wmass[q] += abs(a * wt) * g
    for q in ("pos_high", "pos_low", "neg_high", "neg_low"):
        assert row[f"count_{q}"] == counts[q]
        assert row[f"grad_share_{q}"] == pytest.approx(mass[q] / sum(mass.values()), rel=1e-5, abs=1e-7)
        assert row[f"weighted_grad_share_{q}"] == pytest.approx(wmass[q] / sum(wmass.values()), rel=1e-5, abs=1e-7)


def test_loss_denominator_counts_tokens_or_non_empty_responses():
    rows = [Rollout([1, 2], [5, 6, 7], [-1.0] * 3, [1.0] * 3),
            Rollout([1, 2], [], [], []),  # an empty response: no token, and no sequence either
            Rollout([3], [8], [-1.0], [-1.0])]
    assert trainer_mod.loss_denominator(rows, "token_mean") == 4.0
    assert trainer_mod.loss_denominator(rows, "seq_mean_token_mean") == 2.0
    assert trainer_mod.loss_denominator(rows, "seq_mean_token_sum_norm") == 2.0
    with pytest.raises(ValueError, match="^unknown aggregation 'mean'; known: seq_mean_token_mean, "
                                         "seq_mean_token_sum_norm, token_mean$"):
        trainer_mod.loss_denominator(rows, "mean")


SUMS = dict(responses=4, reward=2.0, correct=1.0, entropy=6.0, tokens=12.0, groups=2, mixed_groups=1.0,
            sampled_tokens=12.0, loss=0.5, update_tokens=24.0, evaluated_tokens=12.0, clipped=6.0, approx_kl=0.24,
            counts=[1, 2, 3, 0],
            grad_mass=[1.0, 1.0, 2.0, 0.0], weighted_grad_mass=[0.0, 0.0, 0.0, 0.0])


def test_step_row_is_named_and_laid_out_in_the_steps_contract_order():
    from eapo.contracts import STEP_COLUMNS
    from eapo.trainer import StepRow, StepSums

    row = StepRow.of(3, "v", StepSums(**SUMS), {"n_opt": 2, "grad_norm": 3.0}, world=1, lr=1e-3, tau=math.inf,
                     sample_seconds=2.0, seconds=5.0).as_dict()
    assert list(row) == [name for name, _ in STEP_COLUMNS] + ["tokens_per_s", "seconds"]
    assert row == {
        "step": 3, "variant": "v", "reward_mean": 0.5, "accuracy": 0.25, "entropy_mean": 0.5, "response_length": 3.0,
        "loss": 0.25, "clip_frac": 0.25, "approx_kl": 0.02, "grad_norm": 1.5, "lr": 1e-3, "tau": 0.0, "tokens": 12,
        "mixed_groups": 0.5, "count_pos_high": 1, "count_pos_low": 2, "count_neg_high": 3, "count_neg_low": 0,
        "grad_share_pos_high": 0.25, "grad_share_pos_low": 0.25, "grad_share_neg_high": 0.5, "grad_share_neg_low": 0.0,
        **{f"weighted_grad_share_{q}": 0.0 for q in ("pos_high", "pos_low", "neg_high", "neg_low")},
        "tokens_per_s": 6.0, "seconds": 5.0,
    }


def test_step_sums_are_summed_over_ranks_by_name():
    """Two ranks with the same samples: every count doubles, every ratio of the row stays, the DDP-averaged loss
    (held by both ranks) is divided by the world size."""
    from eapo.trainer import StepRow, StepSums

    class TwoRanks:
        num_processes, device = 2, "cpu"

        def reduce(self, t, reduction):
            assert reduction == "sum" and t.dtype == torch.float64
            return t * 2

    one = StepSums(**SUMS)
    both = one.summed(TwoRanks())
    assert both.counts == [2.0, 4.0, 6.0, 0.0] and both.responses == 8.0 and both.loss == 1.0
    upd = {"n_opt": 2, "grad_norm": 3.0}
    kw = dict(lr=1e-3, tau=1.0, sample_seconds=2.0, seconds=5.0)
    assert StepRow.of(0, "v", both, upd, world=2, **kw) == dataclasses.replace(
        StepRow.of(0, "v", one, upd, world=1, **kw), tokens=24, count={"pos_high": 2, "pos_low": 4, "neg_high": 6,
                                                                       "neg_low": 0}, tokens_per_s=12.0)
    assert one.summed(type("OneRank", (), {"num_processes": 1})()) is one


# ----------------------------------------------------------------------------------------------------------------------
# The loop's pure per-step helpers, on hand-made inputs (no model)


def test_step_sums_of_one_rank_from_samples_rewards_and_annotation():
    from eapo.sampler import Sample

    def smp(n: int) -> Sample:
        return Sample(0, 0, [1], list(range(n)), [-1.0] * n, [0.5] * n, [0.5] * n, "eos")

    samples = [smp(2), smp(1), smp(3), smp(0)]
    # Two groups of two: (1, 0) has contrast, (0.5, 0.5) has none; only reward exactly 1 is correct.
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5])
    entropy = torch.tensor([0.25, 0.5, 1.0, 2.0, 0.125, 0.125])
    quads = ("pos_high", "pos_low", "neg_high", "neg_low")
    ann = dataclasses.make_dataclass("Ann", ["quadrants", "weighted_quadrants"])(
        {q: {"count": i + 1, "grad_mass": 0.5 * i} for i, q in enumerate(quads)},
        {q: {"count": i + 1, "grad_mass": 2.0 * i} for i, q in enumerate(quads)})
    upd = {"loss": 0.75, "tokens": 12.0, "evaluated_tokens": 8.0, "clipped": 3.0, "approx_kl": 0.125,
           "grad_norm": 9.0, "n_opt": 2}
    s = trainer_mod._step_sums(samples, rewards, entropy, ann, upd, 2, 17.0)
    assert dataclasses.asdict(s) == dict(
        responses=4, reward=2.0, correct=1.0, entropy=4.0, tokens=6.0, groups=2, mixed_groups=1.0,
        sampled_tokens=17.0, loss=0.75, update_tokens=12.0, evaluated_tokens=8.0, clipped=3.0, approx_kl=0.125,
        counts=[1, 2, 3, 4], grad_mass=[0.0, 0.5, 1.0, 1.5], weighted_grad_mass=[0.0, 2.0, 4.0, 6.0])
    # Groups are consecutive runs of group_size: as one group of four, that group has contrast.
    one_group = trainer_mod._step_sums(samples, rewards, entropy, ann, upd, 4, 17.0)
    assert (one_group.groups, one_group.mixed_groups) == (1, 1.0)


def test_step_row_ratios_are_zero_where_undefined_and_tau_is_kept_when_finite():
    from eapo.trainer import StepRow, StepSums

    empty = StepSums(**{**SUMS, "entropy": 0.0, "tokens": 0.0, "update_tokens": 0.0, "evaluated_tokens": 0.0,
                        "clipped": 0.0,
                        "approx_kl": 0.0, "groups": 0, "mixed_groups": 0.0, "grad_mass": [0.0] * 4,
                        "sampled_tokens": 0.0})
    row = StepRow.of(1, "v", empty, {"n_opt": 0, "grad_norm": 0.0}, world=1, lr=0.5, tau=2.5,
                     sample_seconds=0.0, seconds=0.0)
    assert (row.entropy_mean, row.clip_frac, row.approx_kl, row.mixed_groups, row.tokens_per_s) == (0, 0, 0, 0, 0)
    assert row.grad_share == {q: 0.0 for q in ("pos_high", "pos_low", "neg_high", "neg_low")}
    # n_opt 0 (no update) divides by 1, not by 0; a finite τ is reported as is.
    assert row.loss == SUMS["loss"] and row.grad_norm == 0.0 and row.tau == 2.5 and row.lr == 0.5
    assert row.response_length == 0.0 and row.tokens == 0
    # Every ratio of the row with its own numerator and denominator (world 4: only the loss is divided by it).
    # clip_frac over every update token, approx_kl over the tokens the update ran (silent responses left out)
    s = StepSums(**{**SUMS, "loss": 6.0, "clipped": 3.0, "approx_kl": 1.5, "update_tokens": 12.0,
                    "evaluated_tokens": 6.0,
                    "sampled_tokens": 30.0, "groups": 4, "mixed_groups": 3.0, "tokens": 10.0, "entropy": 5.0})
    r = StepRow.of(2, 7, s, {"n_opt": 3, "grad_norm": 6.0}, world=4, lr=1.0, tau=-1.0, sample_seconds=3.0,
                   seconds=1.0)
    assert r.variant == "7" and r.step == 2
    assert r.loss == pytest.approx(0.5) and r.grad_norm == 2.0 and r.clip_frac == 0.25 and r.approx_kl == 0.25
    assert r.mixed_groups == 0.75 and r.entropy_mean == 0.5 and r.response_length == 2.5
    assert r.tokens_per_s == 10.0 and r.tau == -1.0 and r.tokens == 10
    assert r.grad_share == {"pos_high": 0.25, "pos_low": 0.25, "neg_high": 0.5, "neg_low": 0.0}
    assert StepRow.of(0, "v", s, {"n_opt": 1, "grad_norm": 1.0}, world=1, lr=1.0, tau=math.nan,
                      sample_seconds=1.0, seconds=1.0).tau == 0.0


def test_step_row_as_dict_has_python_scalars_and_refuses_a_row_that_lost_a_column():
    from eapo.trainer import StepRow, StepSums

    row = StepRow.of(3, "v", StepSums(**SUMS), {"n_opt": 2, "grad_norm": 3.0}, world=1, lr=1e-3, tau=1.0,
                     sample_seconds=2.0, seconds=5.0)
    d = row.as_dict()
    assert type(d["tokens"]) is int and type(d["count_pos_high"]) is int and type(d["loss"]) is float
    assert type(dataclasses.replace(row, lr=np.float32(0.5)).as_dict()["lr"]) is np.float32  # only floats cast
    assert type(dataclasses.replace(row, loss=1).as_dict()["loss"]) is int

    @dataclasses.dataclass(frozen=True)
    class Extra(StepRow):
        extra: float = 0.0

    with pytest.raises(AssertionError, match="differ from the steps contract"):
        Extra(**dataclasses.asdict(row)).as_dict()


def test_step_sums_flat_lists_scalars_then_each_quadrant_in_field_order():
    from eapo.trainer import StepSums

    flat = StepSums(**SUMS).flat()
    assert flat == [4, 2.0, 1.0, 6.0, 12.0, 2, 1.0, 12.0, 0.5, 24.0, 12.0, 6.0, 0.24, 1, 2, 3, 0,
                    1.0, 1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0]


def test_all_sum_is_the_identity_on_one_process_and_a_float64_sum_reduce_otherwise():
    one = type("One", (), {"num_processes": 1})()
    vals = [3, 1.5]
    assert trainer_mod._all_sum(vals, one) is vals

    class Two:
        num_processes, device = 2, "cpu"

        def reduce(self, t, reduction):
            assert reduction == "sum" and t.dtype == torch.float64 and str(t.device) == "cpu"
            return t * 2

    assert trainer_mod._all_sum([3, 1.5], Two()) == [6.0, 3.0]


def test_derive_seed_is_stable_63_bit_and_order_sensitive():
    import hashlib

    s = trainer_mod.derive_seed(0, 1, "sample")
    digest = hashlib.sha256(b"eapo.train:0:1:sample").digest()
    assert s == int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
    assert 0 <= s < 2 ** 63
    assert trainer_mod.derive_seed(1, 0, "sample") != s and trainer_mod.derive_seed(0, 1, "loss") != s
    # Across processes and Python versions: a fixed value (sha256, no hash randomisation).
    assert trainer_mod.derive_seed(0) == int.from_bytes(hashlib.sha256(b"eapo.train:0").digest()[:8],
                                                        "little") & ((1 << 63) - 1)
    assert max(trainer_mod.derive_seed(i) for i in range(64)) >= 2 ** 62  # the 63rd bit is used


def test_step_prompt_indices_walk_a_fresh_permutation_per_epoch():
    n, p = 5, 3
    steps = [trainer_mod.step_prompt_indices(n, p, 7, s) for s in range(5)]
    assert all(len(s) == p for s in steps)
    flat = [i for s in steps for i in s]
    for epoch in range(3):
        assert sorted(flat[epoch * n:(epoch + 1) * n]) == list(range(n))
        perm = np.random.default_rng([7, epoch]).permutation(n).tolist()
        assert flat[epoch * n:(epoch + 1) * n] == perm
    assert trainer_mod.step_prompt_indices(n, p, 7, 1) == flat[3:6]
    assert trainer_mod.step_prompt_indices(n, p, 8, 0) != steps[0] or \
        trainer_mod.step_prompt_indices(n, p, 8, 1) != steps[1]


def test_warmup_is_linear_over_the_warmup_steps_then_one():
    f = trainer_mod._warmup(4)
    assert [f(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert [trainer_mod._warmup(0)(s) for s in (0, 3)] == [1.0, 1.0]
    assert trainer_mod._warmup(-2)(0) == 1.0
    assert trainer_mod._warmup(1)(0) == 1.0


def test_global_norm_is_the_norm_of_all_elements_together():
    ts = [torch.tensor([3.0]), torch.tensor([[4.0, 0.0], [0.0, 12.0]], dtype=torch.float16)]
    assert trainer_mod._global_norm(ts) == pytest.approx(13.0)
    assert trainer_mod._global_norm([]) == 0.0
    assert math.isinf(trainer_mod._global_norm([torch.tensor([math.inf, 1.0])]))


def test_per_token_flattens_one_statistic_over_the_batch_in_order():
    from eapo.sampler import Sample

    a = Sample(0, 0, [1], [5, 6], [-0.5, -1.5], [0.25, 2.0], [0.5, 0.75], "eos")
    b = Sample(0, 1, [1], [7], [-2.5], [1.0], [0.125], "length")
    e = Sample(1, 0, [1], [], [], [], [], "eos")
    out = trainer_mod._per_token([a, e, b], "entropies")
    assert out.dtype == torch.float32 and out.tolist() == [0.25, 2.0, 1.0]
    assert trainer_mod._per_token([a, b], "logprobs").tolist() == [-0.5, -1.5, -2.5]
