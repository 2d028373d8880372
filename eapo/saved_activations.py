"""Fewer activations kept for backward in the training forward, with the same math bit for bit.

Most of a training step's memory above the weights, gradients and Adam moments is what autograd saves for backward
(issue 14: 1.3 GiB for a micro-batch of 8 × 160 tokens through SmolLM2). Per decoder layer and token, a Llama block
saves, among others:

- MLP ``down(silu(gate(x)) * up(x))``: ``gate``, ``silu(gate)``, ``up`` and their product, 4 × intermediate floats.
  ``silu(gate)`` and the product are elementwise functions of ``gate`` and ``up``, which are saved anyway.
- RMSNorm ``w * (x * rsqrt(mean(x²) + eps))``: ``x``, ``rsqrt(...)`` and the normalised ``x * rsqrt(...)``. The last
  is one multiply away from the first two.

``apply(model)`` runs both the same way but saves the derived tensors as a recipe (a ``saved_tensors_hooks`` pack),
recomputed from the saved inputs when backward unpacks them: a few elementwise ops per layer instead of
2 × intermediate + 2 × hidden floats per token. Forward and backward run the very same kernels on the very same
values, so outputs and gradients are bit-identical to the unpatched model (``tests/test_saved_activations.py`` holds
it against transformers' own modules), and so is the data of every artifact the pipeline writes.

Not done, measured: SDPA with grouped-query attention. transformers repeats K and V to every query head before SDPA
when a mask is given; ``TRANSFORMERS_SDPA_FORCE_GQA=1`` passes them grouped, which PyTorch's CPU flash attention takes.
It saved a further 0.09 GiB at micro-batch 8 × 160 tokens, but the K/V gradient then sums the grouped heads in
another order, so the weights are no longer bit-identical.

Measured (README "Performance"): what a micro-batch of 8 × 160 tokens keeps falls by a third (1.29 → 0.86 GiB), and
the peak RSS of one update of 32 × 160 (``benchmarks/bench_memory.py``) from 4.6 to 4.17 GiB, at the same speed.
"""

from __future__ import annotations

import types
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["apply", "patched"]

#: Module classes whose forward is exactly Llama's RMSNorm / gated-SiLU MLP (transformers copies them by name).
_RMSNORM = frozenset({"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm"})
_MLP = frozenset({"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP"})


class _Recipes:
    """Within a ``with``: a tensor registered by ``derive`` is saved for backward as a recipe, not as memory.

    Keyed by storage address: the registered tensors stay referenced by the caller until the block ends, so no other
    tensor can take their address while the hooks are active. A saved view (``linear`` saves its 3-D input as 2-D)
    is rebuilt with the same size, stride and offset on the recomputed storage.
    """

    def __init__(self) -> None:
        self._fns: dict[int, tuple[Callable[[], Tensor], int]] = {}
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def derive(self, t: Tensor, fn: Callable[[], Tensor]) -> Tensor:
        self._fns[t.untyped_storage().data_ptr()] = (fn, t.untyped_storage().nbytes())
        return t

    def _pack(self, t: Tensor):
        hit = self._fns.get(t.untyped_storage().data_ptr())
        if hit is None or hit[1] != t.untyped_storage().nbytes():
            return t
        return hit[0], tuple(t.shape), t.stride(), t.storage_offset()

    @staticmethod
    def _unpack(packed):
        if isinstance(packed, Tensor):
            return packed
        fn, size, stride, offset = packed
        with torch.no_grad():
            return fn().as_strided(size, stride, offset)

    def __enter__(self) -> _Recipes:
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._ctx.__exit__(*exc)
        self._fns.clear()


def _mlp_forward(self, x: Tensor) -> Tensor:
    """``LlamaMLP.forward``: down(act(gate(x)) * up(x)), keeping only ``gate`` and ``up`` for backward."""
    if not torch.is_grad_enabled():  # nothing is saved (the trainer's sampling): skip the hooks
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))
    gate, up = self.gate_proj(x), self.up_proj(x)
    with _Recipes() as r:
        act = r.derive(self.act_fn(gate), lambda: self.act_fn(gate))
        prod = r.derive(act * up, lambda: self.act_fn(gate) * up)
        out = self.down_proj(prod)
    return out


def _rmsnorm_forward(self, hidden_states: Tensor) -> Tensor:
    """``LlamaRMSNorm.forward``, keeping ``x`` and ``rsqrt(mean(x²) + eps)`` but not their product."""
    input_dtype = hidden_states.dtype
    x = hidden_states.to(torch.float32)
    variance = x.pow(2).mean(-1, keepdim=True)
    inv = torch.rsqrt(variance + self.variance_epsilon)
    if not torch.is_grad_enabled():
        return self.weight * (x * inv).to(input_dtype)
    with _Recipes() as r:
        normed = r.derive((x * inv).to(input_dtype), lambda: (x * inv).to(input_dtype))
        out = self.weight * normed
    return out


def _patchable(module: torch.nn.Module) -> Callable | None:
    name = type(module).__name__
    if name in _MLP and all(hasattr(module, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn")):
        return _mlp_forward
    if name in _RMSNORM and hasattr(module, "variance_epsilon") and hasattr(module, "weight"):
        return _rmsnorm_forward
    return None


def apply(model: torch.nn.Module) -> int:
    """Make ``model``'s MLPs and RMSNorms save fewer activations (module docstring); returns how many modules now do.
    Idempotent; modules of other architectures are left as they are (0 for a model with none)."""
    n = 0
    for module in model.modules():
        fwd = _patchable(module)
        if fwd is None:
            continue
        if getattr(module.forward, "__func__", None) is not fwd:
            module.forward = types.MethodType(fwd, module)
        n += 1
    return n


def patched(model: torch.nn.Module) -> int:
    """How many of ``model``'s modules run the leaner forward."""
    return sum(1 for m in model.modules()
               if (fwd := _patchable(m)) is not None and getattr(m.forward, "__func__", None) is fwd)
