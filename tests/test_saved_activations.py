"""eapo.saved_activations: the training forward keeps fewer tensors for backward, and computes exactly the same."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from eapo import saved_activations
from eapo.forward import grouped_logprobs, sequence_logprobs

SIZES = dict(vocab_size=96, hidden_size=32, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)


def _model(cls=LlamaForCausalLM, config_cls=LlamaConfig, seed: int = 0):
    torch.manual_seed(seed)
    config = config_cls(**SIZES, tie_word_embeddings=True)
    config._attn_implementation = "sdpa"
    return cls(config).float().train()


def _rows(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    prompts, responses = [], []
    for _ in range(2):  # two groups of three responses: prefix sharing gathers the prompt's cache to its rows
        prompt = torch.randint(3, 96, (7,), generator=g).tolist()
        for n in (5, 3, 6):
            prompts.append(prompt)
            responses.append(torch.randint(3, 96, (n,), generator=g).tolist())
    return prompts, responses


def _grouped_update(model):
    prompts, responses = _rows()
    logp, ent = grouped_logprobs(model, prompts, responses, pad_id=0, chunk_size=4)
    (logp.sum() * 0.3 - logp.exp().sum()).backward()
    return logp.detach(), ent, {n: p.grad.clone() for n, p in model.named_parameters()}


def _sequence_update(model):
    ids = torch.randint(3, 96, (3, 12), generator=torch.Generator().manual_seed(2))
    attn = torch.ones_like(ids)
    attn[1, 9:] = 0
    resp = torch.zeros_like(ids, dtype=torch.bool)
    resp[:, 5:9] = True
    logp, ent = sequence_logprobs(model, ids, attn, resp, chunk_size=5)
    logp.sum().backward()
    return logp.detach(), ent, {n: p.grad.clone() for n, p in model.named_parameters()}


def _held_bytes(model, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> int:
    """Bytes a forward leaves allocated (the logits plus what autograd saves for backward), by PyTorch's profiler:
    its allocations minus its frees. Walking the graph's ``_saved_*`` would unpack, i.e. recompute, the recipes."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = model(input_ids=ids, attention_mask=attention_mask).logits
    held = sum(e.self_cpu_memory_usage for e in prof.key_averages())
    del out
    return held


@pytest.mark.parametrize("cls,config_cls", [(LlamaForCausalLM, LlamaConfig), (Qwen2ForCausalLM, Qwen2Config),
                                            (MistralForCausalLM, MistralConfig)])
@pytest.mark.parametrize("update", [_grouped_update, _sequence_update])
def test_outputs_and_gradients_are_bit_identical(cls, config_cls, update):
    base = _model(cls, config_cls)
    lean = copy.deepcopy(base)
    assert saved_activations.apply(lean) == 2 * 3 + 1  # per layer: an MLP and two norms; the final norm
    ref_logp, ref_ent, ref_grads = update(base)
    logp, ent, grads = update(lean)
    assert torch.equal(logp, ref_logp) and torch.equal(ent, ref_ent)
    for name, g in ref_grads.items():
        assert torch.equal(grads[name], g), name


def test_the_recomputed_tensors_are_no_longer_saved():
    base = _model()
    lean = copy.deepcopy(base)
    saved_activations.apply(lean)
    ids = torch.randint(3, 96, (2, 10), generator=torch.Generator().manual_seed(3))

    tokens, layers = ids.numel(), SIZES["num_hidden_layers"]
    # Per layer and token: silu(gate) and the product (2 x intermediate), two normalised states (2 x hidden); the
    # final norm's normalised state (hidden). fp32.
    expected = 4 * tokens * (layers * (2 * SIZES["intermediate_size"] + 2 * SIZES["hidden_size"])
                             + SIZES["hidden_size"])
    assert _held_bytes(base, ids) - _held_bytes(lean, ids) == expected
    with torch.no_grad():  # without autograd (sampling) nothing is saved, and the forward is still the same
        assert torch.equal(lean(input_ids=ids).logits, base(input_ids=ids).logits)


def test_apply_is_idempotent_and_leaves_other_architectures_alone():
    model = _model()
    assert saved_activations.patched(model) == 0
    assert saved_activations.apply(model) == saved_activations.apply(model) == saved_activations.patched(model) == 7
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=96, n_embd=32, n_layer=1, n_head=2, n_positions=32))
    assert saved_activations.apply(gpt2) == 0
    # a deep copy (the trainer's KL reference) runs its own modules, not the original's
    clone = copy.deepcopy(model)
    assert saved_activations.patched(clone) == 7
    assert clone.model.layers[0].mlp.forward.__self__ is clone.model.layers[0].mlp
