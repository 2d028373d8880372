"""The forward passes of the policy update: log π and the entropy at response positions, fp32, without ever
building [B, T, V] logits (DESIGN §8). Used by the trainer's update (``eapo.trainer.accumulate_gradients``) and by
the benchmarks.

Memory. The decoder runs without its head, the hidden states at response positions are gathered, and
``logprob_entropy_from_hidden`` projects them through the LM head in chunks of ``chunk_size`` rows with activation
checkpointing. Micro-batches (``collate``) are padded on the right to their own longest row only.

Shared prompts (``grouped_logprobs``). The G responses of a group share their prompt, and all prompts share the chat
template's prefix, so for a Llama-like model (``supports_prefix_sharing``) a micro-batch runs the common prefix once,
each distinct prompt once and the responses against the resulting KV cache, all *with* gradient: the prompt's keys and
values are gathered out to their rows differentiably, so the parameter gradient keeps every path of the
full-sequence forward and equals it up to fp32 rounding (~1e-6 relative). Wrapped (DDP) models and other cache
layouts fall back to the full-sequence ``sequence_logprobs``, which also stays the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from eapo.core.entropy import logprob_entropy_from_hidden

__all__ = [
    "Rollout",
    "collate",
    "collate_responses",
    "grouped_logprobs",
    "micro_logprobs",
    "sequence_logprobs",
    "supports_prefix_sharing",
]


@dataclass
class Rollout:
    """One sampled response, annotated for the update. Per-token lists are aligned with ``response_ids``."""

    prompt_ids: list[int]
    response_ids: list[int]
    old_logp: list[float]
    adv_tokens: list[float]
    """Â_{i,t} = A_i · w_{i,t}: the advantage each token is trained with."""



def _final_hidden(model, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Final (post-norm) hidden states [B, T, D], without running the LM head over every position."""
    from accelerate.utils import extract_model_from_parallel

    inner = extract_model_from_parallel(model)
    base = getattr(inner, "base_model", None)
    if model is inner and base is not None and base is not inner:
        return base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    # A wrapped model (DDP, ...) must be called through its wrapper, whose forward arms the gradient all-reduce.
    # logits_to_keep=1 keeps the head's work to one position per row; hidden_states[-1] is the post-norm state.
    out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, output_hidden_states=True,
                logits_to_keep=1)
    return out.hidden_states[-1]


def sequence_logprobs(
    model, input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor, chunk_size: int = 256,
    entropy_grad: bool = False,
) -> tuple[Tensor, Tensor]:
    """log π(token) and the full-vocabulary entropy H at response positions, temperature 1, fp32.

    Args:
        model: a causal LM (HF ``*ForCausalLM``; may be wrapped by accelerate/DDP).
        input_ids, attention_mask: [B, T] prompt + response, padded on the right.
        response_mask: [B, T] bool, True where ``input_ids`` is a response token (scored given its prefix). Column 0
            must be False: a scored token needs a preceding token.
        chunk_size: rows per LM-head chunk (bounds the [chunk, V] temporaries in forward and backward).

    Returns:
        (logp [B, T], entropy [B, T]), zero outside ``response_mask``; ``logp`` is differentiable, and ``entropy``
        too with ``entropy_grad`` (an entropy bonus), else detached.
        Only the response positions go through the LM head: [B, T, V] logits never exist.
    """
    response_mask = response_mask.bool()
    if response_mask.shape != input_ids.shape:
        raise ValueError(f"response_mask {tuple(response_mask.shape)} != input_ids {tuple(input_ids.shape)}")
    if bool(response_mask[:, 0].any()):
        raise ValueError("response_mask[:, 0] must be False: a response token needs a preceding prompt token")
    hidden = _final_hidden(model, input_ids, attention_mask)
    from accelerate.utils import extract_model_from_parallel

    head = extract_model_from_parallel(model).get_output_embeddings()
    # Position t-1 predicts token t: gather the predicting hidden states of exactly the response tokens.
    predict = response_mask[:, 1:]
    h = hidden[:, :-1][predict]
    targets = input_ids[:, 1:][predict]
    logp, ent = logprob_entropy_from_hidden(h, head.weight, targets, chunk_size=chunk_size,
                                            lm_head_bias=getattr(head, "bias", None), checkpoint=True)
    # Row-major order of True entries is the same in `predict` and in `response_mask` (its column 0 is False).
    zeros = torch.zeros(response_mask.shape, dtype=logp.dtype, device=logp.device)
    return (zeros.masked_scatter(response_mask, logp),
            zeros.masked_scatter(response_mask, ent if entropy_grad else ent.detach()))


def supports_prefix_sharing(model) -> bool:
    """Whether ``grouped_logprobs`` can run ``model``: an unwrapped HF decoder whose base model takes
    ``attention_mask``, ``position_ids`` and a ``DynamicCache`` of plain (full-attention) ``DynamicLayer`` layers, as
    Llama does. A wrapped model (DDP, ...) must be called once per backward through its wrapper, and sliding-window
    or hybrid caches have other mask rules: both take the full-sequence path (``sequence_logprobs``)."""
    from accelerate.utils import extract_model_from_parallel

    if extract_model_from_parallel(model) is not model:
        return False
    base = getattr(model, "base_model", None)
    config = getattr(model, "config", None)
    if base is None or base is model or config is None:
        return False
    if getattr(config, "model_type", None) not in _PREFIX_SHARING_MODEL_TYPES:
        return False
    if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager"):
        return False
    try:
        from transformers.cache_utils import DynamicCache, DynamicLayer

        layers = DynamicCache(config=config).layers
    except Exception:  # noqa: BLE001 - an unknown cache API is a reason to fall back, not to fail
        return False
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


#: Decoders whose base model follows Llama's cache/mask/position conventions (checked further by
#: ``supports_prefix_sharing``).
_PREFIX_SHARING_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def _right_pad(rows: Sequence[Sequence[int]], pad_id: int, width: int, device) -> tuple[Tensor, Tensor]:
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        n = min(len(r), width)
        if n:
            ids[i, :n] = torch.as_tensor(list(r[:n]), dtype=torch.long, device=device)
            mask[i, :n] = 1
    return ids, mask


def grouped_logprobs(
    model,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    pad_id: int,
    chunk_size: int = 256,
    *,
    min_shared: int = 4,
    entropy_grad: bool = False,
) -> tuple[Tensor, Tensor]:
    """``sequence_logprobs`` in response layout, with every distinct prompt computed once, with gradient.

    Rows that share a prompt (a GRPO group) share its forward: the prompt runs once and its per-layer keys/values
    are indexed out to its rows (a differentiable gather, whose backward sums the rows' gradients into the shared
    prompt activations), then the responses run against that cache. The prefix common to all distinct prompts (the
    chat template and system prompt) likewise runs once, with batch 1. Gradients flow through every path the
    full-sequence forward has (response tokens → prompt keys/values → parameters), so log-probs, entropies and the
    parameter gradient equal ``sequence_logprobs``'s up to fp32 rounding; only the prompt work shrinks by the
    number of rows that share it.

    Layout: [common prefix][prompt suffix, right-padded][response, right-padded], padding masked out, explicit
    ``position_ids`` counting real tokens, so each row sees exactly its own prompt + response (right padding leaves
    no fully masked query row). Token j of a response is predicted from the hidden state before it: j = 0 from the
    prompt's last position, j ≥ 1 from response position j - 1; the last response token is never fed.

    Args:
        model: an unwrapped HF causal LM for which ``supports_prefix_sharing`` holds.
        prompts, responses: token ids per row (prompts non-empty).

    Returns:
        (logp [B, R], entropy [B, R]) with R the longest response; column j is response token j; zero beyond each
        row's response. ``logp`` is differentiable; ``entropy`` too with ``entropy_grad``, else detached.
    """
    from transformers.cache_utils import DynamicCache

    from eapo.sampler import _cache_kwarg, _common_prefix_len

    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every row needs a non-empty prompt: the first response token is predicted from it")
    device = next(model.parameters()).device
    B = len(prompts)
    R = max((len(r) for r in responses), default=0)
    resp_len = torch.tensor([len(r) for r in responses], dtype=torch.long, device=device)
    if R == 0:
        zeros = torch.zeros((B, 0), dtype=torch.float32, device=device)
        return zeros, zeros.clone()

    slots: dict[tuple[int, ...], int] = {}
    row_slot = [slots.setdefault(tuple(p), len(slots)) for p in prompts]
    distinct = [list(p) for p in slots]
    U = len(distinct)
    expand = torch.tensor(row_slot, dtype=torch.long, device=device)
    identity = row_slot == list(range(B))

    base = model.base_model
    cache_kw = _cache_kwarg(base)
    cache = DynamicCache(config=model.config)
    S = _common_prefix_len(distinct) if U > 1 else 0
    if S < min_shared:
        S = 0
    if S:  # the common prefix, batch 1, then one cache row per distinct prompt
        prefix = torch.tensor([distinct[0][:S]], dtype=torch.long, device=device)
        base(input_ids=prefix, use_cache=True, **{cache_kw: cache})
        _repeat_cache_rows(cache, torch.zeros(U, dtype=torch.long, device=device))
    suffixes = [p[S:] for p in distinct]
    suf_len = torch.tensor([len(x) for x in suffixes], dtype=torch.long, device=device)
    Ls = int(suf_len.max())
    ids, suf_mask = _right_pad(suffixes, pad_id, Ls, device)
    mask = torch.cat([suf_mask.new_ones((U, S)), suf_mask], dim=1)
    pos = S + torch.arange(Ls, device=device).expand(U, Ls)
    hidden = base(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                  **{cache_kw: cache}).last_hidden_state
    h_last = hidden[torch.arange(U, device=device), suf_len - 1]  # [U, D]: predicts response token 0
    if not identity:
        h_last = h_last.index_select(0, expand)
    predict = h_last[:, None]
    if R > 1:  # response tokens 0..R-2 (each row's last token predicts nothing) against its prompt's cache
        if not identity:
            _repeat_cache_rows(cache, expand)
            mask = mask[expand]
        ids, in_mask = _right_pad([r[:-1] for r in responses], pad_id, R - 1, device)
        mask = torch.cat([mask, in_mask], dim=1)
        prompt_len = (S + suf_len)[expand]
        pos = prompt_len[:, None] + torch.arange(R - 1, device=device)
        hidden = base(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                      **{cache_kw: cache}).last_hidden_state
        predict = torch.cat([predict, hidden], dim=1)  # [B, R, D]
    del cache
    targets, _ = _right_pad(responses, pad_id, R, device)
    response_mask = torch.arange(R, device=device)[None, :] < resp_len[:, None]
    head = model.get_output_embeddings()
    logp, ent = logprob_entropy_from_hidden(predict[response_mask], head.weight, targets[response_mask],
                                            chunk_size=chunk_size, lm_head_bias=getattr(head, "bias", None),
                                            checkpoint=True)
    zeros = torch.zeros(response_mask.shape, dtype=logp.dtype, device=logp.device)
    return (zeros.masked_scatter(response_mask, logp),
            zeros.masked_scatter(response_mask, ent if entropy_grad else ent.detach()))



def _repeat_cache_rows(cache, index: Tensor) -> None:
    """Every layer's keys/values [U, ...] -> [len(index), ...] by ``index_select``. Not the cache's own
    ``batch_select_indices``: that indexes (``keys[index]``), whose backward adds repeated rows' gradients with
    parallel atomic adds on CPU, so a sum over many rows of one prompt changed bits from run to run;
    ``index_select``'s backward (``index_add_``) adds them in row order."""
    for layer in cache.layers:
        layer.keys = layer.keys.index_select(0, index)
        layer.values = layer.values.index_select(0, index)


# ----------------------------------------------------------------------------------------------------------------------
# Micro-batches of rollouts


def collate(rollouts: Sequence[Rollout], pad_id: int, device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """Right-pad prompt+response rows to the longest row of *this* micro-batch.

    Returns input_ids, attention_mask (long), response_mask (bool), old_logp and adv (fp32), all [b, L].
    """
    L = max(len(r.prompt_ids) + len(r.response_ids) for r in rollouts)
    ids, attn, resp, old, adv = [], [], [], [], []
    for r in rollouts:
        p, n = len(r.prompt_ids), len(r.response_ids)
        pad = L - p - n
        ids.append(r.prompt_ids + r.response_ids + [pad_id] * pad)
        attn.append([1] * (p + n) + [0] * pad)
        resp.append([False] * p + [True] * n + [False] * pad)
        old.append([0.0] * p + list(r.old_logp) + [0.0] * pad)
        adv.append([0.0] * p + list(r.adv_tokens) + [0.0] * pad)
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long, device=device),
        "attention_mask": torch.tensor(attn, dtype=torch.long, device=device),
        "response_mask": torch.tensor(resp, dtype=torch.bool, device=device),
        "old_logp": torch.tensor(old, dtype=torch.float32, device=device),
        "adv": torch.tensor(adv, dtype=torch.float32, device=device),
    }


def collate_responses(rollouts: Sequence[Rollout], device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """``collate``'s per-token tensors in response layout (``grouped_logprobs``'s): [b, R], column j = response
    token j, right-padded to this micro-batch's longest response."""
    R = max((len(r.response_ids) for r in rollouts), default=0)
    resp, old, adv = [], [], []
    for r in rollouts:
        pad = R - len(r.response_ids)
        resp.append([True] * len(r.response_ids) + [False] * pad)
        old.append(list(r.old_logp) + [0.0] * pad)
        adv.append(list(r.adv_tokens) + [0.0] * pad)
    return {
        "response_mask": torch.tensor(resp, dtype=torch.bool, device=device).reshape(len(rollouts), R),
        "old_logp": torch.tensor(old, dtype=torch.float32, device=device).reshape(len(rollouts), R),
        "adv": torch.tensor(adv, dtype=torch.float32, device=device).reshape(len(rollouts), R),
    }



def micro_logprobs(model, rows: Sequence[Rollout], mb: dict[str, Tensor], shared: bool, pad_id: int,
                    chunk_size: int, with_entropy: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """log π of one micro-batch in ``mb``'s layout: response layout when ``shared`` (``grouped_logprobs``, or the
    full-sequence forward moved into it for a model without prefix sharing, e.g. a reference), else full layout.
    ``with_entropy``: return (log π, entropy with gradient) instead, for losses that use the entropy."""
    if not shared:
        out = sequence_logprobs(model, mb["input_ids"], mb["attention_mask"], mb["response_mask"], chunk_size,
                                entropy_grad=with_entropy)
    elif supports_prefix_sharing(model):
        out = grouped_logprobs(model, [r.prompt_ids for r in rows], [r.response_ids for r in rows], pad_id,
                               chunk_size, entropy_grad=with_entropy)
    else:
        full = collate(rows, pad_id, mb["response_mask"].device)
        full_out = sequence_logprobs(model, full["input_ids"], full["attention_mask"], full["response_mask"],
                                     chunk_size, entropy_grad=with_entropy)
        out = tuple(x.new_zeros(mb["response_mask"].shape).masked_scatter(mb["response_mask"],
                                                                          x[full["response_mask"]])
                    for x in full_out)
    return (out[0], out[1]) if with_entropy else out[0]

