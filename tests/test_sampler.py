"""eapo.sampler: exact per-token statistics, determinism, eos handling, both backends."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from eapo.policy import build_prompt_ids, load_policy
from eapo.sampler import (
    Sample,
    Samples,
    _common_prefix_len,
    draw,
    nucleus,
    sample,
    sample_tokens,
    teacher_forced_logprobs,
    token_stats,
)

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = REPO_ROOT / ".cache" / "models"
TOL = 1e-4
# The tiny random model's distribution is near uniform over 49152 tokens, so it never picks eos by itself. Treating
# every 8th token id as eos makes ~1/8 of the draws end a response: rows then finish at different steps, which
# exercises dropping finished rows from the batch and the KV cache.
MANY_EOS = list(range(2, 49152, 8))


# policy/sampler fixtures (kept local to this file)
@pytest.fixture(scope="module")
def tiny():
    return load_policy("tiny-random-llama", seed=0, cache_dir=CACHE_DIR)


@pytest.fixture(scope="module")
def prompts(tiny):
    tok = tiny.tokenizer
    qs = ["Hi", "What is 2+3?", "Compute the sum of 17 and 25, then add 4, and explain each step carefully."]
    ids = [build_prompt_ids(tok, q, "Be brief.", None) for q in qs]
    assert len({len(p) for p in ids}) == 3  # different lengths: left padding is exercised
    assert _common_prefix_len(ids) >= 4  # the shared-prefix prefill is exercised
    return ids


@pytest.fixture(scope="module")
def raw_prompts():
    """Plain token lists without a common prefix: exercises the prefill without prefix sharing and the trimming of
    all-padding cache columns once the rows that needed the padding are finished."""
    return [[101, 7, 9, 11, 300, 5], [2000, 17], [45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56]]


def _check_teacher_forcing(model, samples):
    for s in samples:
        lp, ent = teacher_forced_logprobs(model, s.prompt_ids, s.response_ids)
        assert len(lp) == len(s.logprobs) == len(s.entropies) == len(s.sum_p_sq) == len(s.response_ids)
        assert max(abs(a - b) for a, b in zip(lp, s.logprobs)) < TOL
        assert max(abs(a - b) for a, b in zip(ent, s.entropies)) < TOL


def _check_structure(samples, prompts, n, max_new_tokens, eos_ids):
    assert isinstance(samples, Samples) and all(isinstance(s, Sample) for s in samples)
    assert [(s.prompt_index, s.sample_idx) for s in samples] == [
        (p, i) for p in range(len(prompts)) for i in range(n)
    ]
    eos = set(eos_ids)
    for s in samples:
        assert s.prompt_ids == prompts[s.prompt_index]
        assert 1 <= len(s.response_ids) <= max_new_tokens
        assert not eos.intersection(s.response_ids[:-1])  # nothing after the first eos
        if s.finish_reason == "eos":
            assert s.response_ids[-1] in eos
        else:
            assert s.finish_reason == "length" and len(s.response_ids) == max_new_tokens
            assert s.response_ids[-1] not in eos
        assert all(0.0 < q <= 1.0 + 1e-6 for q in s.sum_p_sq)
        assert all(lp <= 1e-6 for lp in s.logprobs) and all(h >= -1e-6 for h in s.entropies)
    assert samples.stats["tokens"] == sum(len(s.response_ids) for s in samples)
    assert samples.stats["seconds"] > 0 and samples.stats["tokens_per_s"] > 0


@pytest.mark.parametrize("backend", ["fast", "generate"])
@pytest.mark.parametrize("prompt_set", ["chat", "raw"])
def test_matches_teacher_forcing_with_padding_and_early_stops(tiny, request, prompt_set, backend):
    prompts = request.getfixturevalue("prompts" if prompt_set == "chat" else "raw_prompts")
    out = sample(
        tiny.model,
        tiny.tokenizer,
        prompts,
        n=3,
        temperature=0.7,
        top_p=0.9,
        max_new_tokens=12,
        seed=3,
        batch_size=4,
        backend=backend,
        eos_token_ids=MANY_EOS,
    )
    _check_structure(out, prompts, 3, 12, MANY_EOS)
    reasons = {s.finish_reason for s in out}
    assert reasons == {"eos", "length"}
    assert out.stats["backend"] == backend and out.stats["n_batches"] == 3
    _check_teacher_forcing(tiny.model, out)


def test_sum_p_sq_matches_direct_computation(tiny, prompts):
    out = sample(tiny.model, tiny.tokenizer, prompts[:1], n=1, max_new_tokens=3, seed=0)
    s = out[0]
    ids = torch.tensor([s.prompt_ids + s.response_ids])
    with torch.no_grad():
        logits = tiny.model(input_ids=ids).logits[0, len(s.prompt_ids) - 1 : -1].float()
    p = logits.softmax(-1)
    assert torch.allclose(torch.tensor(s.sum_p_sq), (p * p).sum(-1), rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("backend", ["fast", "generate"])
def test_same_seed_identical_other_seed_different(tiny, prompts, backend):
    kw = {
        "n": 2,
        "temperature": 1.0,
        "max_new_tokens": 8,
        "batch_size": 4,
        "backend": backend,
        "eos_token_ids": MANY_EOS,
    }
    a = sample(tiny.model, tiny.tokenizer, prompts, seed=11, **kw)
    torch.rand(5)  # unrelated RNG use in between must not matter
    b = sample(tiny.model, tiny.tokenizer, prompts, seed=11, **kw)
    c = sample(tiny.model, tiny.tokenizer, prompts, seed=12, **kw)
    assert [(s.response_ids, s.logprobs, s.entropies, s.sum_p_sq, s.finish_reason) for s in a] == [
        (s.response_ids, s.logprobs, s.entropies, s.sum_p_sq, s.finish_reason) for s in b
    ]
    assert [s.response_ids for s in a] != [s.response_ids for s in c]
    # the n copies of one prompt are different draws
    assert a[0].response_ids != a[1].response_ids


@pytest.mark.parametrize("backend", ["fast", "generate"])
def test_stops_at_first_eos_greedy(tiny, prompts, backend):
    kw = {"n": 1, "temperature": 0.0, "max_new_tokens": 10, "seed": 0, "backend": backend}
    free = sample(tiny.model, tiny.tokenizer, prompts, eos_token_ids=[0], **kw)  # token 0 never comes up here
    assert all(s.finish_reason == "length" and len(s.response_ids) == 10 for s in free)
    stop = free[1].response_ids[3]
    cut = sample(tiny.model, tiny.tokenizer, prompts, eos_token_ids=[stop], **kw)
    for f, c in zip(free, cut):
        if stop in f.response_ids:
            k = f.response_ids.index(stop)
            assert c.response_ids == f.response_ids[: k + 1] and c.finish_reason == "eos"
        else:
            assert c.response_ids == f.response_ids and c.finish_reason == "length"
    assert len(cut[1].response_ids) <= 4 and cut[1].finish_reason == "eos"
    _check_teacher_forcing(tiny.model, cut)


def _eos_biased(tiny, bias: float):
    """A copy of the tiny model whose LM head has a bias toward the tokenizer's eos. Unbiased, the near-uniform
    model never samples eos among 49152 tokens, so no test of the default eos could fail; with bias b the chance per
    token is about e^b / (e^b + 49152): b = 9.7 gives ~25%."""
    import copy

    model = copy.deepcopy(tiny.model)
    old = model.get_output_embeddings()
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight = old.weight  # still tied to the input embedding
        head.bias.zero_()
        head.bias[tiny.tokenizer.eos_token_id] = bias
    model.set_output_embeddings(head)
    return model


@pytest.mark.parametrize("backend", ["fast", "generate"])
def test_default_eos_is_the_tokenizer_eos(tiny, prompts, backend):
    eos = tiny.tokenizer.eos_token_id
    model = _eos_biased(tiny, 9.7)
    out = sample(model, tiny.tokenizer, prompts, n=4, max_new_tokens=6, seed=0, backend=backend)
    # Some responses end at the (default) eos and some run to the length limit: both paths are exercised.
    assert {s.finish_reason for s in out} == {"eos", "length"}
    _check_structure(out, prompts, 4, 6, [eos])
    for s in out:
        assert (s.finish_reason == "eos") == (s.response_ids[-1] == eos)
    _check_teacher_forcing(model, out)


def test_progress_bar_and_callback(tiny, prompts):
    seen = []
    sample(
        tiny.model,
        tiny.tokenizer,
        prompts,
        n=2,
        max_new_tokens=3,
        seed=0,
        batch_size=2,
        progress=lambda done, toks: seen.append((done, toks)),
    )
    assert seen[-1] == (3, 18) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    out = sample(tiny.model, tiny.tokenizer, prompts, n=1, max_new_tokens=2, seed=0, progress=True)
    assert len(out) == 3


def test_bad_arguments(tiny, prompts):
    with pytest.raises(ValueError, match="backend"):
        sample(tiny.model, tiny.tokenizer, prompts, n=1, max_new_tokens=2, seed=0, backend="vllm-on-cpu")
    with pytest.raises(ValueError):
        sample(tiny.model, tiny.tokenizer, prompts, n=1, max_new_tokens=2, seed=0, top_p=0.0)
    with pytest.raises(ValueError, match="empty prompt"):
        sample(tiny.model, tiny.tokenizer, [[]], n=1, max_new_tokens=2, seed=0)


# ---------------------------------------------------------------------------------------------------------------------
# the sampling distribution itself


def test_nucleus_matches_hf_top_p():
    from transformers.generation.logits_process import TopPLogitsWarper

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 500, generator=g) * 3
    logits[0] = torch.randn(500, generator=g) * 0.01  # near uniform: the nucleus exceeds the top-k shortcut
    for top_p in (0.5, 0.9, 0.99):
        hf = TopPLogitsWarper(top_p)(None, logits.clone())
        vals, idx = nucleus(logits.softmax(-1), top_p, k=16)
        kept = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, idx, vals > 0)
        assert torch.equal(kept, hf > float("-inf"))


def test_draw_frequencies_follow_temperature_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(20000, 1)
    g = torch.Generator().manual_seed(0)
    p1 = logits.softmax(-1)
    # T = 1, no top-p: the distribution itself
    freq = torch.bincount(sample_tokens(logits, p1, 1.0, 1.0, g), minlength=4).float() / 20000
    assert torch.allclose(freq, p1[0], atol=0.015)
    # T = 0.5 and top_p = 0.75: softmax(z / 0.5) = [.6944, .25, .0625, .0069]; the nucleus is tokens {0, 1}
    q = (logits[0] / 0.5).softmax(-1)
    expected = torch.tensor([q[0], q[1], 0, 0]) / (q[0] + q[1])
    freq = torch.bincount(sample_tokens(logits, p1, 0.5, 0.75, g), minlength=4).float() / 20000
    assert torch.allclose(freq, expected, atol=0.015)
    assert torch.equal(sample_tokens(logits[:3], p1[:3], 0.0, 1.0, g), torch.zeros(3, dtype=torch.long))
    # zero-probability entries are never drawn
    probs = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]]).repeat(500, 1)
    assert torch.equal(draw(probs, g), torch.tensor([1, 3]).repeat(500))


def test_token_stats_exact():
    logits = torch.tensor([[0.0, math.log(3.0)], [5.0, 5.0]])
    logp, ent, sp2 = token_stats(logits, torch.tensor([1, 0]))
    assert torch.allclose(logp, torch.tensor([math.log(0.75), math.log(0.5)]))
    assert torch.allclose(
        ent, torch.tensor([-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), math.log(2.0)])
    )
    assert torch.allclose(sp2, torch.tensor([0.25**2 + 0.75**2, 0.5]))


# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_both_backends_match_teacher_forcing():
    pol = load_policy("smollm2-135m-instruct", cache_dir=CACHE_DIR)
    assert pol.info["kind"] == "gguf-embedded" and len(pol.info["sha256"]) == 64
    assert 130_000_000 < pol.info["n_params"] < 140_000_000
    tok = pol.tokenizer
    prompts = [
        build_prompt_ids(tok, q, None, "Put your final answer within \\boxed{}.")
        for q in ["What is 3 + 4?", "What is 12 + 29?"]
    ]
    for backend in ("fast", "generate"):
        out = sample(
            pol.model, tok, prompts, n=2, temperature=1.0, max_new_tokens=16, seed=0, backend=backend
        )
        _check_structure(out, prompts, 2, 16, [tok.eos_token_id])
        _check_teacher_forcing(pol.model, out)


def test_a_registered_backend_is_picked_by_name(tiny, prompts):
    """A new backend (e.g. vLLM) is one registration: ``sample`` looks it up by name, with the seeds and eos ids it
    gives every backend, and builds the same ``Samples`` from the rows it fills."""
    from eapo.sampler import BACKENDS

    calls = []

    @BACKENDS.register("test_fixed")
    def fixed(model, rows, *, temperature, top_p, max_new_tokens, seed, eos_ids, pad_id, on_tokens):
        calls.append((len(rows), seed, tuple(eos_ids)))
        for r in rows:
            r.tokens, r.logprobs, r.entropies, r.sum_p_sq = [7, 9], [-1.0, -2.0], [0.5, 0.25], [0.1, 0.2]
            r.finish_reason = "length"
        on_tokens(2 * len(rows))

    try:
        out = sample(tiny.model, tiny.tokenizer, prompts, n=2, max_new_tokens=2, seed=3, batch_size=4,
                     backend="test_fixed", eos_token_ids=[5])
    finally:
        BACKENDS.unregister("test_fixed")
    assert [c[0] for c in calls] == [4, 2]  # 6 rows in batches of 4
    assert len({c[1] for c in calls}) == 2 and all(c[2] == (5,) for c in calls)  # one seed per batch
    assert [s.response_ids for s in out] == [[7, 9]] * 6 and [s.prompt_ids for s in out[::2]] == prompts
    assert out.stats["tokens"] == 12 and out.stats["backend"] == "test_fixed"
    with pytest.raises(ValueError, match="^unknown sampler backend 'test_fixed'; known: fast, generate$"):
        sample(tiny.model, tiny.tokenizer, prompts, n=1, max_new_tokens=2, seed=0, backend="test_fixed")
