"""Sample G responses per prompt and record, per response token, the policy's exact statistics at temperature 1.

For each sampled token y_t with prefix h (whatever temperature / top-p was used to *draw* it), from the raw logits z:

    logprobs[t]  = log softmax(z)[y_t]
    entropies[t] = -sum_v pi(v) log pi(v),   pi = softmax(z)      (nats, full vocabulary)
    sum_p_sq[t]  = sum_v pi(v)^2          (so that ||grad_z log pi(y)|| = sqrt(1 - 2 pi(y) + sum_p_sq))

all in fp32. Two backends (``BACKENDS``, by name):

- ``"fast"`` (default): our own decode loop, decoding one token per step with a ``DynamicCache``.
  * rows are bucketed by prompt length; each distinct prompt is prefilled once and its KV cache repeated for its n
    copies; the prefix common to all prompts of a batch (the chat template's system prompt) is prefilled once, with
    batch 1. Padding sits between the shared prefix and each suffix, masked out, with explicit ``position_ids``.
  * finished rows are DROPPED from the batch and from the KV cache (and cache columns that became padding for every
    remaining row are cut), so late steps only pay for live rows.
  * log-softmax once per step on [B, V] in fp32; temperature and top-p in torch directly (top-p looks at the top 64
    first and sorts the vocabulary only when the nucleus is larger); tokens are drawn by inverse CDF with one uniform
    per row from a ``torch.Generator`` (``torch.multinomial`` costs ~15x more on a 49k vocabulary).
- ``"generate"``: HF ``model.generate(output_logits=True)``; the statistics are computed from the raw logits. The
  fallback and the benchmark baseline. It draws from torch's global RNG, so it is seeded with ``torch.manual_seed``
  inside ``torch.random.fork_rng`` (the caller's RNG state is left untouched).

Determinism: batch ``b`` uses its own generator seeded from (``seed``, ``b``), so the same call (same prompts, ``n``,
``seed``, ``batch_size``, backend) gives bit-identical samples on CPU, independent of any other RNG use. Changing
``batch_size`` changes which rows share a batch, hence the draws.

``sample`` returns a ``Samples`` object: a plain ``list[Sample]`` in (prompt, sample_idx) order, with a ``stats`` dict
attached (tokens, seconds, tokens_per_s, backend, n_batches, ...), so tokens/s can be computed without a second API.
"""

from __future__ import annotations

import hashlib
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from eapo.core.registry import Registry

Runner = Callable[..., None]
BACKENDS: Registry[Runner] = Registry("sampler backend")
"""Sampling backends by name (``train.backend``, ``rollout.backend``). A backend is
``runner(model, rows, *, temperature, top_p, max_new_tokens, seed, eos_ids, pad_id, on_tokens)``: it samples every
``_Row`` of one batch in place (``tokens``, ``logprobs``, ``entropies``, ``sum_p_sq`` at temperature 1, and
``finish_reason``), draws only from a generator seeded by ``seed``, and calls ``on_tokens(k)`` as it produces k
response tokens. Register another (e.g. vLLM) with ``@BACKENDS.register("name")``; ``sample`` and the trainer only
look it up by name."""


@dataclass
class Sample:
    prompt_index: int
    sample_idx: int
    prompt_ids: list[int]
    response_ids: list[int]  # up to and including the first eos, nothing after it
    logprobs: list[float]
    entropies: list[float]
    sum_p_sq: list[float]
    finish_reason: Literal["eos", "length"]


class Samples(list):
    """``list[Sample]`` with a ``stats`` dict: tokens (response tokens generated), seconds (wall time of ``sample``),
    tokens_per_s, backend, n_batches, n_samples."""

    def __init__(self, items=(), stats: dict | None = None):
        super().__init__(items)
        self.stats: dict = dict(stats or {})


@dataclass
class _Row:
    """One (prompt, sample) row while it is being sampled."""

    prompt_index: int
    sample_idx: int
    prompt_ids: list[int]
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    entropies: list[float] = field(default_factory=list)
    sum_p_sq: list[float] = field(default_factory=list)
    finish_reason: str = "length"


# ----------------------------------------------------------------------------------------------------------------------
# per-position statistics and the sampling distribution


def token_stats(
    logits: torch.Tensor, tokens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits [B, V] (raw), tokens [B] -> (logp [B], entropy [B], sum_p_sq [B]), fp32, at temperature 1."""
    logp = F.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    return logp.gather(-1, tokens[:, None]).squeeze(-1), -(p * logp).sum(-1), (p * p).sum(-1)


def nucleus(probs: torch.Tensor, top_p: float, k: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-p filter with HF's semantics (a token is kept iff the probability mass ranked strictly above it is < top_p;
    the most likely token is always kept). Returns (filtered probs [B, K], their vocabulary ids [B, K]).

    A full sort of [B, V] costs ~200 ms at B=32, V=49152 on this CPU; the nucleus is usually small, so look at the
    top ``k`` first and sort fully only when some row's nucleus does not fit in it.
    """
    k = min(k, probs.shape[-1])
    vals, idx = probs.topk(k, dim=-1)  # sorted, descending
    cum = vals.cumsum(-1)
    if k < probs.shape[-1] and bool((cum[:, -1] < top_p).any()):
        vals, idx = probs.sort(dim=-1, descending=True)
        cum = vals.cumsum(-1)
    keep = (cum - vals) < top_p
    keep[:, 0] = True
    return vals * keep, idx


def draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One index per row of the (unnormalised, non-negative) ``probs`` [B, K], by inverse CDF with one uniform per row.
    ~15x cheaper than ``torch.multinomial`` on [32, 49152] (which draws an exponential per vocabulary entry)."""
    cdf = probs.cumsum(-1)
    u = (
        torch.rand((probs.shape[0], 1), generator=generator, device=probs.device, dtype=cdf.dtype)
        * cdf[:, -1:]
    )
    return torch.searchsorted(cdf, u, right=True).clamp_(max=probs.shape[-1] - 1).squeeze(-1)


def sample_tokens(
    logits: torch.Tensor,
    probs_t1: torch.Tensor,
    temperature: float,
    top_p: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Draw one token per row from softmax(logits / T) restricted to the top-p nucleus; T = 0 is greedy.
    ``probs_t1`` = softmax(logits), already computed for the statistics, is reused at T = 1."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = probs_t1 if temperature == 1.0 else torch.softmax(logits.float() / temperature, dim=-1)
    if top_p >= 1.0:
        return draw(probs, generator)
    vals, idx = nucleus(probs, top_p)
    return idx.gather(-1, draw(vals, generator)[:, None]).squeeze(-1)


def _batch_seed(seed: int, batch_index: int) -> int:
    digest = hashlib.sha256(f"eapo.sampler:{seed}:{batch_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    L = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), L), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, L - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, L - len(p) :] = 1
    return ids.to(device), mask.to(device)


# ----------------------------------------------------------------------------------------------------------------------
# backends: each fills the rows of one batch in place


def _cache_kwarg(model) -> str:
    """transformers 5.24 names the KV-cache argument ``cache`` (``past_key_values`` is deprecated); older models and
    remote code still use ``past_key_values``."""
    params = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _common_prefix_len(prompts: list[list[int]]) -> int:
    first = prompts[0]
    n = min(len(p) for p in prompts) - 1  # every prompt keeps at least one token of its own
    for p in prompts[1:]:
        k = 0
        while k < n and p[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


def _prefill(model, prompts: list[list[int]], cache, cache_kw: str, pad_id: int, device, min_shared: int = 4):
    """Run the prompts through the model into ``cache``; returns (last logits [U, V], attention mask [U, S],
    next position [U]).

    The prefix common to all prompts (a chat template's system prompt and headers) is computed once, with batch 1, and
    its cache repeated; only the left-padded suffixes are then run as a batch. Row layout: [shared prefix][pad][suffix],
    with the padding masked out and ``position_ids`` counting real tokens only, so every row sees exactly its prompt.
    """
    shared = _common_prefix_len(prompts) if len(prompts) > 1 else 0
    if shared < min_shared:
        shared = 0
    if shared:
        prefix = torch.tensor([prompts[0][:shared]], dtype=torch.long, device=device)
        model(input_ids=prefix, use_cache=True, logits_to_keep=1, **{cache_kw: cache})
        cache.batch_select_indices(torch.zeros(len(prompts), dtype=torch.long, device=device))
    ids, suffix_mask = _left_pad([p[shared:] for p in prompts], pad_id, device)
    mask = torch.cat([suffix_mask.new_ones((len(prompts), shared)), suffix_mask], dim=1)
    position_ids = (mask.cumsum(-1) - 1).clamp_(min=0)[:, shared:]
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=position_ids,
        use_cache=True,
        logits_to_keep=1,
        **{cache_kw: cache},
    )
    return out.logits[:, -1], mask, position_ids[:, -1] + 1


@BACKENDS.register("fast")
@torch.inference_mode()
def _run_fast(
    model, rows: list[_Row], *, temperature, top_p, max_new_tokens, seed, eos_ids, pad_id, on_tokens
):
    from transformers.cache_utils import DynamicCache, DynamicLayer

    device = model.device
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    eos = torch.tensor(eos_ids, dtype=torch.long, device=device)

    # Prefill each distinct prompt once, then repeat its KV cache for its copies in this batch (n copies share it).
    distinct: dict[int, list[int]] = {}
    for r in rows:
        distinct.setdefault(r.prompt_index, r.prompt_ids)
    slot = {prompt_index: k for k, prompt_index in enumerate(distinct)}
    expand = torch.tensor([slot[r.prompt_index] for r in rows], dtype=torch.long, device=device)
    cache = DynamicCache(config=model.config)
    cache_kw = _cache_kwarg(model)
    logits, mask, next_pos = _prefill(model, list(distinct.values()), cache, cache_kw, pad_id, device)
    if len(distinct) < len(rows):
        cache.batch_select_indices(expand)
    logits, mask, next_pos = logits[expand], mask[expand], next_pos[expand]
    alive = list(range(len(rows)))  # batch row -> index into `rows`

    for step in range(max_new_tokens):
        logp_all = F.log_softmax(logits.float(), dim=-1)
        p = logp_all.exp()
        ent = -(p * logp_all).sum(-1)
        sp2 = (p * p).sum(-1)
        tok = sample_tokens(logits, p, temperature, top_p, generator)
        logp = logp_all.gather(-1, tok[:, None]).squeeze(-1)
        done = torch.isin(tok, eos)
        cols = torch.stack([tok.float(), logp, ent, sp2, done.float()]).tolist()  # one host transfer per step
        # token ids are < 2^24, so the float round trip is exact
        for j, i in enumerate(alive):
            r = rows[i]
            r.tokens.append(int(cols[0][j]))
            r.logprobs.append(cols[1][j])
            r.entropies.append(cols[2][j])
            r.sum_p_sq.append(cols[3][j])
            if cols[4][j]:
                r.finish_reason = "eos"
        on_tokens(len(alive))
        if step == max_new_tokens - 1:
            break
        if any(cols[4]):
            keep = (~done).nonzero().squeeze(-1)
            if keep.numel() == 0:
                break
            alive = [alive[j] for j in keep.tolist()]
            cache.batch_select_indices(keep)
            mask, next_pos, tok = mask[keep], next_pos[keep], tok[keep]
            # columns that are padding for every remaining row carry nothing: cut them from mask and cache
            first = int(mask.any(0).int().argmax())
            if first > 0 and all(type(layer) is DynamicLayer for layer in cache.layers):
                mask = mask[:, first:]
                for layer in cache.layers:
                    layer.keys = layer.keys[:, :, first:]
                    layer.values = layer.values[:, :, first:]
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        out = model(
            input_ids=tok[:, None],
            attention_mask=mask,
            position_ids=next_pos[:, None],
            use_cache=True,
            **{cache_kw: cache},
        )
        logits = out.logits[:, -1]
        next_pos = next_pos + 1


@BACKENDS.register("generate")
@torch.inference_mode()
def _run_generate(
    model, rows: list[_Row], *, temperature, top_p, max_new_tokens, seed, eos_ids, pad_id, on_tokens
):
    from transformers import GenerationConfig

    device = model.device
    ids, mask = _left_pad([r.prompt_ids for r in rows], pad_id, device)
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
        if temperature > 0
        else {"do_sample": False}
    )
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        eos_token_id=list(eos_ids),
        pad_token_id=pad_id,
        output_logits=True,
        return_dict_in_generate=True,
        **sampling,
    )
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    new_tokens = out.sequences[:, ids.shape[1] :]  # [b, T]
    eos = torch.tensor(eos_ids, dtype=torch.long, device=device)
    for t, step_logits in enumerate(out.logits):  # T tensors of raw logits [b, V]
        logp, ent, sp2 = token_stats(step_logits, new_tokens[:, t])
        cols = torch.stack([logp, ent, sp2]).tolist()
        toks = new_tokens[:, t].tolist()
        is_eos = torch.isin(new_tokens[:, t], eos).tolist()
        n_live = 0
        for j, r in enumerate(rows):
            if r.finish_reason == "eos":
                continue  # this row already ended: what generate padded after it is not part of the response
            n_live += 1
            r.tokens.append(toks[j])
            r.logprobs.append(cols[0][j])
            r.entropies.append(cols[1][j])
            r.sum_p_sq.append(cols[2][j])
            if is_eos[j]:
                r.finish_reason = "eos"
        on_tokens(n_live)


# ----------------------------------------------------------------------------------------------------------------------
# public API


def sample(
    model,
    tokenizer,
    prompts_ids: list[list[int]],
    *,
    n: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int,
    seed: int,
    batch_size: int = 64,
    backend: str = "fast",
    eos_token_ids: list[int] | None = None,
    progress: bool | Callable[[int, int], None] = False,
) -> Samples:
    """Sample ``n`` responses for each prompt; returns ``Samples`` (a ``list[Sample]`` in (prompt, sample_idx) order,
    with ``.stats``).

    ``eos_token_ids`` defaults to the tokenizer's eos (plus the model's generation-config eos ids). ``progress``: True
    shows a tqdm bar (prompts done, tokens/s); a callable is called as ``progress(prompts_done, tokens_done)`` after
    each batch. ``temperature=0`` is greedy decoding.
    """
    runner = BACKENDS[backend]
    if n < 1 or max_new_tokens < 1 or batch_size < 1:
        raise ValueError("n, max_new_tokens and batch_size must be >= 1")
    if temperature < 0 or not (0.0 < top_p <= 1.0):
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    if any(len(p) == 0 for p in prompts_ids):
        raise ValueError("empty prompt")
    eos_ids = _eos_ids(model, tokenizer, eos_token_ids)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]

    rows = [_Row(p, s, [int(t) for t in ids]) for p, ids in enumerate(prompts_ids) for s in range(n)]
    # bucket by prompt length (stable sort keeps the n copies of a prompt together) so batches carry little padding
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].prompt_ids))
    batches = [[rows[i] for i in order[k : k + batch_size]] for k in range(0, len(order), batch_size)]

    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(prompts_ids), desc=f"sample[{backend}]", unit="prompt")
    callback = progress if callable(progress) else None

    t0 = time.perf_counter()
    tokens = 0
    rows_done_per_prompt = [0] * len(prompts_ids)
    prompts_done = 0

    def on_tokens(k: int) -> None:
        nonlocal tokens
        tokens += k

    was_training = model.training
    model.eval()
    try:
        for b, batch in enumerate(batches):
            runner(
                model,
                batch,
                temperature=temperature,
                top_p=top_p,
                max_new_tokens=max_new_tokens,
                seed=_batch_seed(seed, b),
                eos_ids=eos_ids,
                pad_id=pad_id,
                on_tokens=on_tokens,
            )
            for r in batch:
                rows_done_per_prompt[r.prompt_index] += 1
                if rows_done_per_prompt[r.prompt_index] == n:
                    prompts_done += 1
                    if bar is not None:
                        bar.update(1)
            if bar is not None:
                bar.set_postfix(tok_s=f"{tokens / max(time.perf_counter() - t0, 1e-9):.1f}")
            if callback is not None:
                callback(prompts_done, tokens)
    finally:
        if was_training:
            model.train()
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0

    samples = [
        Sample(
            r.prompt_index,
            r.sample_idx,
            r.prompt_ids,
            r.tokens,
            r.logprobs,
            r.entropies,
            r.sum_p_sq,
            r.finish_reason,
        )
        for r in rows
    ]
    stats = {
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
        "backend": backend,
        "n_batches": len(batches),
        "n_samples": len(samples),
    }
    return Samples(samples, stats)


def _eos_ids(model, tokenizer, eos_token_ids: list[int] | None) -> list[int]:
    if eos_token_ids:
        return [int(t) for t in eos_token_ids]
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None) if gen is not None else None
    for t in [extra] if isinstance(extra, int) else (extra or []):
        if int(t) not in ids:
            ids.append(int(t))
    if not ids:
        raise ValueError("no eos token: pass eos_token_ids")
    return ids


@torch.inference_mode()
def teacher_forced_logprobs(
    model, prompt_ids: list[int], response_ids: list[int]
) -> tuple[list[float], list[float]]:
    """One plain full forward pass over prompt + response (no padding, no cache): per response token, the fp32
    log-prob and entropy at temperature 1. The reference the samplers are tested against."""
    if not response_ids:
        return [], []
    ids = torch.tensor([list(prompt_ids) + list(response_ids)], dtype=torch.long, device=model.device)
    logits = model(input_ids=ids, use_cache=False).logits[0]  # [L+T, V]
    L, T = len(prompt_ids), len(response_ids)
    step_logits = logits[L - 1 : L - 1 + T]
    logp, ent, _ = token_stats(step_logits, ids[0, L:])
    return logp.tolist(), ent.tolist()
