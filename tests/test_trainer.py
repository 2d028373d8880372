"""The online RLVR loop (eapo.trainer) on the tiny random Llama: update math, exact resume, determinism, variants."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from eapo import checkpoint
from eapo import trainer as trainer_mod
from eapo.config import ModelConfig, RewardConfig, TrainConfig, VariantConfig
from eapo.core.losses import policy_loss
from eapo.data import generate
from eapo.forward import Rollout, collate, grouped_logprobs, sequence_logprobs, supports_prefix_sharing
from eapo.policy import Policy, load_policy
from eapo.sampler import sample, teacher_forced_logprobs
from eapo.trainer import (
    STEP_KEYS,
    WALL_TIME_KEYS,
    TrainingDiverged,
    accumulate_gradients,
    loss_denominator,
    step_prompt_indices,
    train,
)

ROOT = Path(__file__).resolve().parents[1]
MODEL_CFG = ModelConfig(name_or_path="tiny-random-llama", threads=1)
REWARD_CFG = RewardConfig(workers=1)
GRPO = VariantConfig(weighting="none")
# steps 4 with checkpoints every 2 completed steps: checkpoints after steps 1 and 3. Two minibatches with
# micro-batches of 2 exercise several optimizer steps per step and gradient accumulation.
CFG = TrainConfig(steps=4, prompts_per_step=2, group_size=4, max_new_tokens=8, batch_size=8, micro_batch_size=2,
                  minibatches=2, lr=1e-3, checkpoint_every=2, seed=0)


def parity_reward(responses: list[str], golds: list[str]) -> list[float]:
    """A reward the random model earns about half the time, so groups mix and advantages are non-zero."""
    return [float(len(r) % 2 == 0) for r in responses]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def base() -> Policy:
    return load_policy("tiny-random-llama", cache_dir=ROOT / ".cache" / "models", seed=0)


@pytest.fixture(scope="module")
def prompts() -> list[dict]:
    return [dataclasses.asdict(r) for r in generate(12, families=("add",), levels=(1,), seed=0)]


def fresh(base: Policy) -> Policy:
    """An independent copy of the base policy (the trainer updates its model in place)."""
    return Policy(copy.deepcopy(base.model), base.tokenizer, dict(base.info))


def run(base, prompts, out_dir, cfg=CFG, variant=GRPO, name="grpo", **kw):
    kw.setdefault("reward_fn", parity_reward)
    return train(fresh(base), prompts, cfg, name, variant, MODEL_CFG, REWARD_CFG, out_dir, **kw)


def load_weights(base: Policy, model_dir: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir).state_dict()


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    bad = [k for k in a if not torch.equal(a[k], b[k])]
    assert not bad, f"tensors differ: {bad[:5]}"


def strip_wall_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in WALL_TIME_KEYS} for r in rows]


@pytest.fixture(scope="module")
def reference_run(base, prompts, tmp_path_factory):
    """One uninterrupted run, shared by the resume, determinism and row tests."""
    out = tmp_path_factory.mktemp("ref")
    res = run(base, prompts, out)
    return res, load_weights(base, res.model_dir)


# ----------------------------------------------------------------------------------------------------------------------
# The forward and the update on fixed batches


def synthetic_rollouts(vocab: int, n: int = 6, seed: int = 0) -> list[Rollout]:
    """Rollouts of varied prompt/response lengths (so micro-batches pad differently) and signed advantages."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        p = int(torch.randint(3, 10, (1,), generator=g))
        t = int(torch.randint(1, 8, (1,), generator=g))
        ids = torch.randint(0, vocab, (p + t,), generator=g).tolist()
        sign = 1.0 if i % 2 == 0 else -1.0
        adv = (sign * (0.5 + torch.rand(t, generator=g))).tolist()
        out.append(Rollout(prompt_ids=ids[:p], response_ids=ids[p:], old_logp=[0.0] * t, adv_tokens=adv))
    return out


def set_old_logp(model, rollouts: list[Rollout], noise: float, seed: int = 1) -> None:
    """old_logp = current log-probs (+ noise so that some ratios leave the clip range)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for r in rollouts:
            mb = collate([r], pad_id=0)
            logp, _ = sequence_logprobs(model, mb["input_ids"], mb["attention_mask"], mb["response_mask"], 4)
            lp = logp[mb["response_mask"]]
            r.old_logp = (lp + noise * torch.randn(lp.shape, generator=g)).tolist()


def test_sequence_logprobs_matches_full_forward(base):
    model = base.model
    rollouts = synthetic_rollouts(model.config.vocab_size, n=3)
    mb = collate(rollouts, pad_id=base.tokenizer.pad_token_id)
    with torch.no_grad():
        logp, ent = sequence_logprobs(model, mb["input_ids"], mb["attention_mask"], mb["response_mask"], 5)
    assert logp.shape == ent.shape == mb["input_ids"].shape
    assert torch.all(logp[~mb["response_mask"]] == 0) and torch.all(ent[~mb["response_mask"]] == 0)
    for i, r in enumerate(rollouts):
        ref_lp, ref_h = teacher_forced_logprobs(model, r.prompt_ids, r.response_ids)
        torch.testing.assert_close(logp[i][mb["response_mask"][i]], torch.tensor(ref_lp), atol=1e-5, rtol=0)
        torch.testing.assert_close(ent[i][mb["response_mask"][i]], torch.tensor(ref_h), atol=1e-5, rtol=0)


def test_sequence_logprobs_agrees_with_sampler(base, prompts):
    """The sampler's old log-probs and the training forward describe the same policy (ratio 1 on-policy)."""
    from eapo.policy import build_prompt_ids

    ids = [build_prompt_ids(base.tokenizer, p["prompt"], None, MODEL_CFG.instruction) for p in prompts[:2]]
    samples = sample(base.model, base.tokenizer, ids, n=2, max_new_tokens=6, seed=3)
    rollouts = [Rollout(s.prompt_ids, s.response_ids, s.logprobs, [0.0] * len(s.response_ids)) for s in samples]
    mb = collate(rollouts, pad_id=base.tokenizer.pad_token_id)
    with torch.no_grad():
        logp, ent = sequence_logprobs(base.model, mb["input_ids"], mb["attention_mask"], mb["response_mask"], 8)
    m = mb["response_mask"]
    torch.testing.assert_close(logp[m], mb["old_logp"][m], atol=1e-4, rtol=0)
    torch.testing.assert_close(ent[m], torch.tensor([h for s in samples for h in s.entropies]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_micro_batched_gradient_equals_full_batch(base, agg):
    model = copy.deepcopy(base.model).train()
    rollouts = synthetic_rollouts(model.config.vocab_size, n=6)
    set_old_logp(model, rollouts, noise=0.3)
    cfg = dataclasses.replace(CFG, agg=agg, micro_batch_size=2, chunk_size=3)

    # Reference: the whole minibatch in one padded batch, aggregated by the library's policy_loss.
    mb = collate(rollouts, pad_id=0)
    logp, _ = sequence_logprobs(model, mb["input_ids"], mb["attention_mask"], mb["response_mask"], 1000)
    loss, metrics = policy_loss(logp, mb["old_logp"], mb["adv"], mb["response_mask"], cfg.clip_low, cfg.clip_high,
                                agg=agg, norm_len=cfg.max_new_tokens)
    assert metrics["clip_frac"] > 0  # the noise pushed some ratios out of the clip range
    loss.backward()
    full = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    stats = accumulate_gradients(model, rollouts, cfg, denom=loss_denominator(rollouts, agg), pad_id=0)
    assert stats["loss"] == pytest.approx(float(loss.detach()), abs=1e-6)
    for n, p in model.named_parameters():
        assert (p.grad - full[n]).abs().max().item() < 1e-6, n


def grouped_rollouts(vocab: int, seed: int = 0) -> list[Rollout]:
    """GRPO-shaped rows: 3 prompts of mixed lengths with a common prefix, 3 responses each (one empty), rows
    interleaved across groups, plus a lone prompt with no prefix in common; signed advantages."""
    g = torch.Generator().manual_seed(seed)
    common = torch.randint(0, vocab, (6,), generator=g).tolist()
    groups = []
    for k, own in enumerate((1, 4, 7)):
        prompt = common + torch.randint(0, vocab, (own,), generator=g).tolist()
        rows = []
        for j in range(3):
            n = 0 if (k, j) == (1, 2) else int(torch.randint(1, 8, (1,), generator=g))
            adv = ((1.0 if j % 2 == 0 else -1.0) * (0.5 + torch.rand(n, generator=g))).tolist()
            rows.append(Rollout(prompt, torch.randint(0, vocab, (n,), generator=g).tolist(), [0.0] * n, adv))
        groups.append(rows)
    out = [r for trio in zip(*groups) for r in trio]
    out.append(Rollout(torch.randint(0, vocab, (2,), generator=g).tolist(), [int(torch.randint(0, vocab, (1,)))],
                       [0.0], [1.0]))
    return out


def to_response_layout(x: torch.Tensor, response_mask: torch.Tensor, rollouts: list[Rollout]) -> torch.Tensor:
    width = max(len(r.response_ids) for r in rollouts)
    out = torch.zeros((len(rollouts), width), dtype=x.dtype)
    for i, r in enumerate(rollouts):
        out[i, :len(r.response_ids)] = x[i][response_mask[i]]
    return out


def test_grouped_logprobs_match_full_sequence_forward(base):
    """Shared-prompt forward == full-sequence forward: log-probs, entropies and the parameter gradient."""
    model = copy.deepcopy(base.model).train()
    assert supports_prefix_sharing(model)
    rollouts = grouped_rollouts(model.config.vocab_size)
    mb = collate(rollouts, pad_id=0)
    weights = torch.randn(mb["input_ids"].shape, generator=torch.Generator().manual_seed(2))

    logp, ent = sequence_logprobs(model, mb["input_ids"], mb["attention_mask"], mb["response_mask"], 5)
    (logp * weights).sum().backward()
    ref_grad = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    ref_lp, ref_ent, w = (to_response_layout(x.detach(), mb["response_mask"], rollouts) for x in (logp, ent, weights))

    g_lp, g_ent = grouped_logprobs(model, [r.prompt_ids for r in rollouts], [r.response_ids for r in rollouts],
                                   pad_id=0, chunk_size=5)
    assert g_lp.shape == g_ent.shape == ref_lp.shape
    torch.testing.assert_close(g_lp.detach(), ref_lp, atol=1e-5, rtol=0)
    torch.testing.assert_close(g_ent, ref_ent, atol=1e-5, rtol=1e-6)  # entropies ~ log V ≈ 11
    (g_lp * w).sum().backward()
    for n, p in model.named_parameters():
        rel = ((p.grad - ref_grad[n]).norm() / ref_grad[n].norm()).item()
        assert rel < 1e-5, (n, rel)


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_shared_prompt_update_equals_full_sequence_update(base, agg):
    """accumulate_gradients with prompts shared per group gives the full-sequence path's loss, stats and gradient."""
    model = copy.deepcopy(base.model).train()
    rollouts = grouped_rollouts(model.config.vocab_size, seed=3)
    set_old_logp(model, rollouts, noise=0.3)
    cfg = dataclasses.replace(CFG, agg=agg, micro_batch_size=4, chunk_size=3, kl_coef=0.1)
    ref_model = copy.deepcopy(base.model).eval().requires_grad_(False)
    with torch.no_grad():  # a reference that differs from the policy, so the KL term has a gradient
        for p in ref_model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    denom = loss_denominator(rollouts, agg)
    results = {}
    for share in (False, True):
        stats = accumulate_gradients(model, rollouts, cfg, denom=denom, pad_id=0, ref_model=ref_model,
                                     share_prompts=share)
        results[share] = stats, {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
    (old_stats, old_grad), (new_stats, new_grad) = results[False], results[True]
    assert old_stats["tokens"] == new_stats["tokens"] and old_stats["clipped"] == new_stats["clipped"]
    for k in ("loss", "approx_kl"):
        assert new_stats[k] == pytest.approx(old_stats[k], rel=1e-5, abs=1e-7), k
    for n in old_grad:
        rel = ((new_grad[n] - old_grad[n]).norm() / old_grad[n].norm()).item()
        assert rel < 1e-5, (n, rel)
    # The default picks the shared path for a Llama and is deterministic.
    again = accumulate_gradients(model, rollouts, cfg, denom=denom, pad_id=0, ref_model=ref_model)
    assert again == new_stats
    assert all(torch.equal(p.grad, new_grad[n]) for n, p in model.named_parameters())


def test_prefix_sharing_falls_back_for_wrapped_or_unknown_models(base):
    class Wrapper(torch.nn.Module):  # a module that is not a HF model itself (an unknown wrapper)
        def __init__(self, module):
            super().__init__()
            self.module = module

    assert not supports_prefix_sharing(Wrapper(base.model))
    other = copy.deepcopy(base.model)
    other.config.model_type = "not-a-llama"
    assert not supports_prefix_sharing(other)
    with pytest.raises(ValueError, match="prefix sharing"):
        accumulate_gradients(other, grouped_rollouts(other.config.vocab_size), CFG, denom=1.0, pad_id=0,
                             share_prompts=True)


def test_one_update_raises_positive_sequence_logprob(base):
    torch.manual_seed(0)
    model = copy.deepcopy(base.model).train()
    pos, neg = synthetic_rollouts(model.config.vocab_size, n=2, seed=5)
    pos.adv_tokens = [1.0] * len(pos.response_ids)
    neg.adv_tokens = [-1.0] * len(neg.response_ids)
    batch = [pos, neg]
    set_old_logp(model, batch, noise=0.0)
    cfg = dataclasses.replace(CFG, micro_batch_size=1)
    denom = loss_denominator(batch, cfg.agg)

    def evaluate():
        with torch.no_grad():
            mb = collate(batch, pad_id=0)
            logp, _ = sequence_logprobs(model, mb["input_ids"], mb["attention_mask"], mb["response_mask"], 16)
            loss, _ = policy_loss(logp, mb["old_logp"], mb["adv"], mb["response_mask"])
            return float(loss), logp.sum(-1)

    loss0, lp0 = evaluate()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    accumulate_gradients(model, batch, cfg, denom=denom, pad_id=0)
    optimizer.step()
    loss1, lp1 = evaluate()
    assert loss1 < loss0
    assert lp1[0] > lp0[0]  # the positive-advantage response became more likely
    assert lp1[1] < lp0[1]  # the negative one less likely


# ----------------------------------------------------------------------------------------------------------------------
# The loop


def test_prompt_choice_depends_only_on_seed_and_step():
    a = [step_prompt_indices(10, 4, 0, s) for s in range(5)]
    assert a == [step_prompt_indices(10, 4, 0, s) for s in range(5)]
    flat = [i for s in a for i in s]
    assert sorted(flat[:10]) == list(range(10))  # the first epoch visits every prompt once
    assert a != [step_prompt_indices(10, 4, 1, s) for s in range(5)]


def test_rows_and_model_dir(reference_run, base):
    res, weights = reference_run
    assert [r["step"] for r in res.steps] == list(range(CFG.steps))
    assert res.resumed_from is None
    ints = {"step", "tokens", *[k for k in STEP_KEYS if k.startswith("count_")]}
    for row in res.steps:
        assert tuple(row) == STEP_KEYS
        assert row["variant"] == "grpo"
        for k, v in row.items():
            if k == "variant":
                continue
            assert type(v) is (int if k in ints else float), (k, type(v))
            assert math.isfinite(v), (k, v)
        assert 0.0 <= row["reward_mean"] <= 1.0 and row["accuracy"] == row["reward_mean"]
        assert row["tokens"] == round(row["response_length"] * CFG.prompts_per_step * CFG.group_size)
        assert row["lr"] == CFG.lr and row["grad_norm"] > 0
        assert sum(row[f"count_{q}"] for q in ("pos_high", "pos_low", "neg_high", "neg_low")) <= row["tokens"]
        for prefix in ("grad_share_", "weighted_grad_share_"):
            shares = [row[k] for k in STEP_KEYS if k.startswith(prefix)]
            assert sum(shares) == pytest.approx(1.0) or sum(shares) == 0.0
    assert any(r["mixed_groups"] > 0 for r in res.steps)

    model_dir = res.model_dir
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "tokenizer_config.json").is_file()
    tc = json.loads((model_dir / "train_config.json").read_text())
    assert tc["train"]["steps"] == CFG.steps and tc["variant"]["weighting"] == "none"
    assert tc["model"]["name_or_path"] == "tiny-random-llama" and tc["variant_name"] == "grpo"
    # The weights moved away from the base policy.
    base_sd = base.model.state_dict()
    assert any(not torch.equal(weights[k], base_sd[k]) for k in weights)
    # Keep-last-2: checkpoints after steps 1 and 3 exist, nothing else (no temp leftovers).
    assert sorted(p.name for p in (model_dir.parent / "checkpoints").iterdir()) == ["step-00001", "step-00003"]


@pytest.mark.parametrize("kill_at, expect_ckpt", [(1, 1), (2, 1)], ids=["kill-on-checkpoint", "kill-between"])
def test_exact_resume(reference_run, base, prompts, tmp_path, kill_at, expect_ckpt):
    ref, ref_weights = reference_run
    first = run(base, prompts, tmp_path, stop_after_step=kill_at)
    assert [r["step"] for r in first.steps] == list(range(kill_at + 1))
    assert not (tmp_path / "model").exists()
    assert checkpoint.latest(tmp_path / "checkpoints").name == f"step-{expect_ckpt:05d}"

    resumed = run(base, prompts, tmp_path)
    assert resumed.resumed_from == expect_ckpt
    assert strip_wall_time(resumed.steps) == strip_wall_time(ref.steps)
    assert_same_weights(load_weights(base, resumed.model_dir), ref_weights)


def test_training_keeps_fewer_activations_and_the_same_weights(reference_run, base, prompts, tmp_path, monkeypatch):
    """train() runs the model with eapo.saved_activations (fewer tensors kept for backward); without it, the same run
    trains bit for bit the same weights."""
    from eapo import saved_activations

    policy = fresh(base)
    train(policy, prompts, CFG, "grpo", GRPO, MODEL_CFG, REWARD_CFG, tmp_path / "one", reward_fn=parity_reward,
          stop_after_step=0)
    assert saved_activations.patched(policy.model) == 2 * 3 + 1  # per layer an MLP and two norms; the final norm
    monkeypatch.setattr(saved_activations, "apply", lambda model: 0)
    plain = run(base, prompts, tmp_path / "plain")
    assert_same_weights(load_weights(base, plain.model_dir), reference_run[1])


def test_resume_refuses_a_different_config(base, prompts, tmp_path):
    run(base, prompts, tmp_path, stop_after_step=1)
    with pytest.raises(ValueError, match="train.lr"):
        run(base, prompts, tmp_path, cfg=dataclasses.replace(CFG, lr=2e-3))


def test_determinism(reference_run, base, prompts, tmp_path):
    ref, ref_weights = reference_run
    again = run(base, prompts, tmp_path / "same")
    assert_same_weights(load_weights(base, again.model_dir), ref_weights)
    assert strip_wall_time(again.steps) == strip_wall_time(ref.steps)
    other = run(base, prompts, tmp_path / "other", cfg=dataclasses.replace(CFG, seed=1, steps=2))
    w = load_weights(base, other.model_dir)
    assert any(not torch.equal(w[k], ref_weights[k]) for k in w)


def test_nan_loss_raises_and_keeps_last_checkpoint(base, prompts, tmp_path, monkeypatch):
    done: list[int] = []
    real = trainer_mod.policy_loss_terms

    def poisoned(*args, **kwargs):
        terms, parts = real(*args, **kwargs)
        return (terms * float("nan") if done else terms), parts  # NaN from step 1 on

    monkeypatch.setattr(trainer_mod, "policy_loss_terms", poisoned)
    cfg = dataclasses.replace(CFG, checkpoint_every=1)
    with pytest.raises(TrainingDiverged, match="step 1") as info:
        run(base, prompts, tmp_path, cfg=cfg, on_step=lambda row: done.append(row["step"]))
    assert info.value.step == 1 and done == [0]
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert ckpts == ["step-00000"]
    model = copy.deepcopy(base.model)
    state = checkpoint.load(tmp_path / "checkpoints" / "step-00000", model=model, restore_rng=False)
    assert state.step == 0 and [r["step"] for r in state.steps] == [0]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_variants_change_the_update(base, prompts, tmp_path):
    one = dataclasses.replace(CFG, steps=1)

    def weights_after(name, variant):
        res = run(base, prompts, tmp_path / name, cfg=one, variant=variant, name=name)
        return res.steps[0], load_weights(base, res.model_dir)

    row, w_none = weights_after("none", GRPO)
    assert row["count_pos_high"] > 0  # the quadrant dropped below is not empty
    row_drop, w_drop = weights_after("drop", VariantConfig(weighting="drop_quadrant", quadrant="pos_high"))
    assert row_drop["count_pos_high"] == row["count_pos_high"]  # same samples, same quadrants
    assert row_drop["weighted_grad_share_pos_high"] == 0.0 < row_drop["grad_share_pos_high"]
    assert any(not torch.equal(w_drop[k], w_none[k]) for k in w_none)
    _, w_eapo0 = weights_after("eapo0", VariantConfig(weighting="eapo", alpha=0.0, phi=0.0))
    assert_same_weights(w_eapo0, w_none)


def test_initial_samples_replace_step0_sampling(base, prompts, tmp_path):
    """Given the step-0 samples the loop would draw itself, a run is identical to one that draws them."""
    from eapo.policy import build_prompt_ids

    cfg = dataclasses.replace(CFG, steps=1)
    idx = step_prompt_indices(len(prompts), cfg.prompts_per_step, cfg.seed, 0)
    ids = [build_prompt_ids(base.tokenizer, prompts[i]["prompt"], None, MODEL_CFG.instruction) for i in idx]
    samples = sample(base.model, base.tokenizer, ids, n=cfg.group_size, max_new_tokens=cfg.max_new_tokens,
                     seed=trainer_mod.derive_seed(cfg.seed, 0, 0, "sample"), batch_size=cfg.batch_size)
    texts = [base.tokenizer.decode(s.response_ids, skip_special_tokens=True) for s in samples]
    given = list(zip(samples, parity_reward(texts, [])))
    a = run(base, prompts, tmp_path / "a", cfg=cfg)
    b = run(base, prompts, tmp_path / "b", cfg=cfg, initial_samples=given)
    assert strip_wall_time(a.steps) == strip_wall_time(b.steps)
    assert_same_weights(load_weights(base, a.model_dir), load_weights(base, b.model_dir))
    with pytest.raises(ValueError, match="initial_samples"):
        run(base, prompts, tmp_path / "c", cfg=cfg, initial_samples=given[:-1])


def test_reward_scorer_path(base, prompts, tmp_path):
    """Without reward_fn the RewardScorer scores the decoded responses (the random model earns nothing)."""
    res = run(base, prompts, tmp_path, cfg=dataclasses.replace(CFG, steps=1), reward_fn=None)
    assert res.steps[0]["reward_mean"] == 0.0 and res.steps[0]["mixed_groups"] == 0.0


def test_kl_to_reference(base, prompts, tmp_path):
    """kl_coef > 0 keeps a frozen reference: at step 0 π = π_ref, so the KL gradient vanishes and only later steps
    differ from a run without KL."""
    two = dataclasses.replace(CFG, steps=2, checkpoint_every=1, minibatches=1)  # one update per step
    plain = run(base, prompts, tmp_path / "plain", cfg=two)
    kl = run(base, prompts, tmp_path / "kl", cfg=dataclasses.replace(two, kl_coef=0.5))
    assert strip_wall_time(kl.steps[:1]) == strip_wall_time(plain.steps[:1])
    assert kl.steps[1]["loss"] != plain.steps[1]["loss"]
    w_plain, w_kl = load_weights(base, plain.model_dir), load_weights(base, kl.model_dir)
    assert any(not torch.equal(w_plain[k], w_kl[k]) for k in w_plain)


def test_explosion_without_nan_stops_at_step_0_and_keeps_last_checkpoint(base, prompts, tmp_path):
    """Issue 12: with lr 1e6 every step completed with exit 0 (weights ~5e6, gradient norm 0 from step 1) because
    only NaN/inf was checked. The update-size guard stops at the first update, naming the step; no checkpoint of
    the exploded weights is written. Without the bound the same run completes: the loss never goes NaN."""
    cfg = dataclasses.replace(CFG, lr=1e6, steps=2, checkpoint_every=1, minibatches=1)
    done: list[int] = []
    diverged = r"step 0: an optimizer update of .* the weights.*max_update_ratio = 1.0"
    with pytest.raises(TrainingDiverged, match=diverged) as info:
        run(base, prompts, tmp_path / "guarded", cfg=cfg, on_step=lambda row: done.append(row["step"]))
    assert info.value.step == 0 and info.value.what == "update" and done == []
    assert not (tmp_path / "guarded" / "checkpoints").exists() or not any(
        (tmp_path / "guarded" / "checkpoints").iterdir())
    res = run(base, prompts, tmp_path / "unguarded", cfg=dataclasses.replace(cfg, max_update_ratio=None))
    assert [r["step"] for r in res.steps] == [0, 1] and all(math.isfinite(r["loss"]) for r in res.steps)
    w = load_weights(base, res.model_dir)
    assert max(float(t.abs().max()) for t in w.values()) > 1e3  # exploded, silently


def test_explosion_after_a_good_step_keeps_that_checkpoint(base, prompts, tmp_path, monkeypatch):
    """A healthy step 0 (checkpointed), then an update far larger than the weights at step 1: the run stops at
    step 1 and the step-0 checkpoint is the one on disk, with the pre-explosion weights."""
    real_step = torch.optim.AdamW.step
    calls: list[int] = []

    def exploding_step(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        calls.append(1)
        if len(calls) > 1:  # the second optimizer update (step 1, one minibatch per step) blows up, finitely
            with torch.no_grad():
                for group in self.param_groups:
                    for p in group["params"]:
                        p.mul_(1e4)
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", exploding_step)
    cfg = dataclasses.replace(CFG, steps=3, checkpoint_every=1, minibatches=1)
    with pytest.raises(TrainingDiverged, match="step 1") as info:
        run(base, prompts, tmp_path, cfg=cfg)
    assert info.value.step == 1
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000"]
    model = copy.deepcopy(base.model)
    checkpoint.load(tmp_path / "checkpoints" / "step-00000", model=model, restore_rng=False)
    assert max(float(p.abs().max()) for p in model.parameters()) < 100


def test_non_finite_weights_stop_the_run(base, prompts, tmp_path, monkeypatch):
    real_step = torch.optim.AdamW.step

    def inf_step(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        with torch.no_grad():
            self.param_groups[0]["params"][0].view(-1)[0] = float("inf")
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", inf_step)
    cfg = dataclasses.replace(CFG, steps=1, max_update_ratio=None)
    with pytest.raises(TrainingDiverged, match="step 0: non-finite weights") as info:
        run(base, prompts, tmp_path, cfg=cfg)
    assert info.value.what == "weights"


# ----------------------------------------------------------------------------------------------------------------------
# Entropy-management baselines (issue 10 §4): a variant picks its policy loss by name


def test_policy_loss_by_name_default_is_the_clipped_surrogate_exactly(base):
    from eapo.core.losses import build_policy_loss

    rollouts = synthetic_rollouts(base.model.config.vocab_size)
    set_old_logp(base.model, rollouts, noise=0.3)
    cfg = dataclasses.replace(CFG, micro_batch_size=2)
    denom = loss_denominator(rollouts, cfg.agg)

    def grads(**kw):
        model = copy.deepcopy(base.model)
        out = accumulate_gradients(model, rollouts, cfg, denom=denom, pad_id=0, **kw)
        return out, [p.grad.clone() for p in model.parameters()]

    (ref_out, ref), (out, by_name) = grads(), grads(policy_loss=build_policy_loss("ppo_clip"))
    assert out == ref_out and all(torch.equal(a, b) for a, b in zip(ref, by_name))
    # The entropy bonus gets the entropy with gradient: its update differs from the surrogate's.
    _, bonus = grads(policy_loss=build_policy_loss("entropy_bonus", coef=0.5))
    assert any(not torch.equal(a, b) for a, b in zip(ref, bonus))


TWO_STEPS = dataclasses.replace(CFG, steps=2, checkpoint_every=2)  # two minibatches: the second is off-policy


@pytest.fixture(scope="module")
def grpo_two_steps(base, prompts, tmp_path_factory):
    res = run(base, prompts, tmp_path_factory.mktemp("grpo2"), cfg=TWO_STEPS)
    return load_weights(base, res.model_dir)


# Clip-Cov with the paper's bounds (1, 5) selects nothing on the tiny random model (|Â|·|log π − mean| stays below
# 1), so it equals GRPO there; a wide band shows that the trainer applies the selection.
ACTIVE = {"clip_cov": {"clip_ratio": 0.25, "clip_cov_lb": -100.0, "clip_cov_ub": 100.0}}


@pytest.mark.parametrize("name", ["clip_cov", "kl_cov", "entropy_bonus"])
def test_entropy_baselines_train_two_steps(base, prompts, tmp_path, grpo_two_steps, name):
    """Each new baseline, as params.yaml defines it, trains 2 steps on the tiny model; with parameters that act on
    this model, its update differs from GRPO's."""
    from eapo.config import load_params

    variant = load_params(ROOT / "params.yaml").variants[name]
    assert variant.policy_loss == name and variant.weighting == "none"
    res = run(base, prompts, tmp_path / name, cfg=TWO_STEPS, variant=variant, name=name)
    assert [r["step"] for r in res.steps] == [0, 1] and res.model_dir.is_dir()
    assert all(math.isfinite(v) for r in res.steps for v in r.values() if isinstance(v, float))
    cfg_saved = json.loads((res.model_dir / "train_config.json").read_text())
    assert cfg_saved["variant"]["policy_loss"] == name and cfg_saved["variant"]["loss_params"] == variant.loss_params
    if name in ACTIVE:
        variant = dataclasses.replace(variant, loss_params=ACTIVE[name])
        res = run(base, prompts, tmp_path / f"{name}-active", cfg=TWO_STEPS, variant=variant, name=name)
        # The random token selection is seeded from (seed, step, minibatch, micro-batch): a rerun is identical.
        again = run(base, prompts, tmp_path / f"{name}-again", cfg=TWO_STEPS, variant=variant, name=name)
        assert_same_weights(load_weights(base, again.model_dir), load_weights(base, res.model_dir))
    w_new = load_weights(base, res.model_dir)
    assert any(not torch.equal(w_new[k], grpo_two_steps[k]) for k in grpo_two_steps)


# ----------------------------------------------------------------------------------------------------------------------
# Rows without a learning signal (train.skip_zero_advantage)


def with_silent_rows(vocab: int) -> list[Rollout]:
    """grouped_rollouts with two of its three groups unmixed (every Â of their rows 0, as GRPO gives a group whose
    rewards are all equal) and one more silent row in the mixed group."""
    rollouts = grouped_rollouts(vocab, seed=5)
    for k, r in enumerate(rollouts[:-1]):
        if k % 3 != 1 or k == 4:
            r.adv_tokens = [0.0] * len(r.adv_tokens)
    return rollouts


def count_forward_rows(monkeypatch) -> list[int]:
    seen: list[int] = []
    real = trainer_mod.micro_logprobs

    def counting(model, rows, *args, **kw):
        seen.append(len(rows))
        return real(model, rows, *args, **kw)

    monkeypatch.setattr(trainer_mod, "micro_logprobs", counting)
    return seen


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean"])
def test_rows_without_signal_are_not_run_and_the_gradient_is_the_same(base, monkeypatch, agg):
    """Under the clipped surrogate without a KL term a row whose Â is 0 everywhere adds exactly 0 to the loss and to
    the gradient, so the update leaves it out of the forward/backward: the gradient, loss and clipped count equal
    the full update's (up to float summation order), and only the signal rows are run."""
    model = copy.deepcopy(base.model).train()
    rollouts = with_silent_rows(model.config.vocab_size)
    set_old_logp(model, rollouts, noise=0.3)
    signal = [r for r in rollouts if any(a != 0.0 for a in r.adv_tokens)]
    assert 0 < len(signal) < len(rollouts)
    denom = loss_denominator(rollouts, agg)
    results = {}
    for skip in (False, True):
        seen = count_forward_rows(monkeypatch)
        cfg = dataclasses.replace(CFG, agg=agg, micro_batch_size=4, chunk_size=3, skip_zero_advantage=skip)
        stats = accumulate_gradients(model, rollouts, cfg, denom=denom, pad_id=0)
        results[skip] = stats, {n: p.grad.clone() for n, p in model.named_parameters()}, sum(seen)
        model.zero_grad(set_to_none=True)
    (full, full_grad, full_rows), (skipped, skip_grad, skip_rows) = results[False], results[True]
    assert full_rows == len(rollouts) and skip_rows == len(signal)
    n_tokens = sum(len(r.response_ids) for r in rollouts)
    assert full["tokens"] == skipped["tokens"] == n_tokens
    assert full["evaluated_tokens"] == n_tokens
    assert skipped["evaluated_tokens"] == sum(len(r.response_ids) for r in signal)
    assert skipped["clipped"] == full["clipped"] > 0
    assert skipped["loss"] == pytest.approx(full["loss"], rel=1e-5, abs=1e-7)
    for n in full_grad:
        rel = ((skip_grad[n] - full_grad[n]).norm() / full_grad[n].norm()).item()
        assert rel < 1e-5, (n, rel)


def test_a_minibatch_without_signal_gives_zero_gradients_so_adam_still_steps(base, monkeypatch):
    """Nothing to run: no forward at all, and every trainable parameter gets a zero gradient (not None), so AdamW
    still applies its momentum as it did when the zero gradient was computed."""
    rollouts = with_silent_rows(base.model.config.vocab_size)
    for r in rollouts:
        r.adv_tokens = [0.0] * len(r.adv_tokens)
    seen = count_forward_rows(monkeypatch)
    model = copy.deepcopy(base.model).train()
    stats = accumulate_gradients(model, rollouts, CFG, denom=loss_denominator(rollouts, CFG.agg), pad_id=0)
    assert seen == [] and stats["loss"] == 0.0 and stats["evaluated_tokens"] == 0.0
    assert stats["tokens"] == sum(len(r.response_ids) for r in rollouts)
    for n, p in model.named_parameters():
        assert p.grad is not None and not p.grad.any(), n
    # the same as the computed zero gradient: AdamW moves the weights by its momentum either way
    full = copy.deepcopy(base.model).train()
    accumulate_gradients(full, rollouts, dataclasses.replace(CFG, skip_zero_advantage=False),
                         denom=loss_denominator(rollouts, CFG.agg), pad_id=0)
    assert all(not p.grad.any() for p in full.parameters())


@pytest.mark.parametrize("case", ["entropy_bonus", "clip_cov", "kl_coef"])
def test_rows_without_signal_still_run_where_the_loss_needs_them(base, monkeypatch, case):
    """An entropy bonus has a gradient at Â = 0, Clip-Cov's covariance is taken over every token of the batch, and a
    KL term pulls every row: no row is left out for these."""
    from eapo.core.losses import build_policy_loss

    rollouts = with_silent_rows(base.model.config.vocab_size)
    cfg, kw = CFG, {}
    if case == "kl_coef":
        cfg = dataclasses.replace(CFG, kl_coef=0.1)
        kw["ref_model"] = copy.deepcopy(base.model).eval().requires_grad_(False)
    else:
        kw["policy_loss"] = build_policy_loss(case)
    seen = count_forward_rows(monkeypatch)
    stats = accumulate_gradients(copy.deepcopy(base.model).train(), rollouts, cfg,
                                 denom=loss_denominator(rollouts, cfg.agg), pad_id=0, **kw)
    assert sum(seen) == len(rollouts) * (2 if case == "kl_coef" else 1)  # with a KL term, the reference's too
    assert stats["evaluated_tokens"] == stats["tokens"] == sum(len(r.response_ids) for r in rollouts)


def test_skipping_silent_rows_trains_the_same_policy(reference_run, base, prompts, tmp_path):
    """A whole run with and without the skip: the same trajectory up to float summation order (same rewards and
    sample statistics while the samples agree, weights within float rounding of each other after 4 steps)."""
    off = run(base, prompts, tmp_path / "off", cfg=dataclasses.replace(CFG, skip_zero_advantage=False))
    ref, ref_weights = reference_run
    update = ("loss", "approx_kl", "grad_norm", "clip_frac")  # from the update's forward: equal up to rounding
    first = [k for k in STEP_KEYS if k not in WALL_TIME_KEYS and k not in update]
    assert {k: off.steps[0][k] for k in first} == {k: ref.steps[0][k] for k in first}
    for k in update:
        assert off.steps[0][k] == pytest.approx(ref.steps[0][k], rel=1e-3, abs=1e-6), k
    w_off = load_weights(base, off.model_dir)
    for k in ref_weights:
        assert (w_off[k] - ref_weights[k]).abs().max().item() < 1e-4, k


def test_no_checkpoint_after_the_last_step_when_the_caller_does_not_keep_it(base, prompts, tmp_path):
    """final_checkpoint=False (the train stage, which deletes its checkpoints once the model is committed): the
    checkpoints on the cadence are written, the one after the last step is not, and the model is the same."""
    res = run(base, prompts, tmp_path, final_checkpoint=False)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00001"]
    assert (res.model_dir / "model.safetensors").is_file()
    assert [r["step"] for r in res.steps] == list(range(CFG.steps))


def test_the_train_stage_asks_for_no_final_checkpoint(monkeypatch, tmp_path):
    """The stage removes its run folder (checkpoints are for resuming only) as soon as the model is committed, so a
    checkpoint after the last step would be written only to be deleted."""
    import tasks.train as stage

    seen = {}
    monkeypatch.setattr(stage, "train", lambda *a, **kw: seen.update(kw))
    from eapo.config import load_params

    params = load_params(ROOT / "params.yaml")
    stage.train_policy.fn(None, [], params, "grpo", tmp_path, None)
    assert seen["final_checkpoint"] is False


def test_a_micro_batch_of_one_group_has_a_reproducible_gradient_on_several_threads(base):
    """Every row of a micro-batch shares one prompt (one GRPO group; G = 8 with micro-batches of 8 always, and a
    group alone once silent rows are left out): the prompt's keys/values are repeated to every row. Repeating them by
    advanced indexing has a backward that adds every row's gradient into the one prompt row with parallel atomic
    adds on CPU, so the sum's order, hence its bits, changed from run to run; the gradient must be the same every
    time."""
    model = copy.deepcopy(base.model).train()
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    prompt = torch.randint(0, vocab, (80,), generator=g).tolist()
    rows = 16  # 16 rows x 80 prompt tokens x 64 key/value values per layer: above the CPU kernels' parallel grain
    responses = [torch.randint(0, vocab, (int(torch.randint(2, 9, (1,), generator=g)),), generator=g).tolist()
                 for _ in range(rows)]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        digests = set()
        for _ in range(6):
            model.zero_grad(set_to_none=True)
            logp, _ = grouped_logprobs(model, [prompt] * rows, responses, pad_id=0, chunk_size=64)
            logp.sum().backward()
            digests.add(b"".join(p.grad.numpy().tobytes() for p in model.parameters()))
    finally:
        torch.set_num_threads(before)
    assert len(digests) == 1, f"{len(digests)} different gradients in 6 identical backward passes"
