import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from eapo.core.entropy import (
    logit_grad_norm,
    logit_grad_norm_from_logits,
    logprob_entropy_from_hidden,
    logprob_entropy_from_logits,
    naive_logprob_entropy,
)


def test_hand_computed_uniform_and_two_point():
    # Uniform over 4: H = log 4, log π(y) = −log 4. Logits (0, log 3) → π = (1/4, 3/4).
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3.0), -math.inf, -math.inf]])
    targets = torch.tensor([2, 1])
    logp, ent = logprob_entropy_from_logits(logits, targets, chunk_size=1)
    h2 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert torch.allclose(logp, torch.tensor([-math.log(4.0), math.log(0.75)]), atol=1e-6)
    # -inf logits are masked vocabulary: 0·log 0 = 0, no NaN.
    assert torch.allclose(ent, torch.tensor([math.log(4.0), h2]), atol=1e-6)


@pytest.mark.parametrize("chunk_size", [1, 3, 1024])
def test_chunked_logits_match_naive_values_and_grads(chunk_size):
    logits = (3 * torch.randn(2, 5, 17)).requires_grad_()
    targets = torch.randint(0, 17, (2, 5))
    g1, g2 = torch.randn(2, 5), torch.randn(2, 5)

    logp, ent = logprob_entropy_from_logits(logits, targets, chunk_size=chunk_size)
    (grad,) = torch.autograd.grad((logp * g1).sum() + (ent * g2).sum(), logits)
    ref_logits = logits.detach().clone().requires_grad_()
    ref_logp, ref_ent = naive_logprob_entropy(ref_logits, targets)
    (ref_grad,) = torch.autograd.grad((ref_logp * g1).sum() + (ref_ent * g2).sum(), ref_logits)

    assert logp.shape == ent.shape == (2, 5)
    assert torch.allclose(logp, ref_logp, atol=1e-5)
    assert torch.allclose(ent, ref_ent, atol=1e-5)
    assert torch.allclose(grad, ref_grad, atol=1e-5)


def test_sum_p_sq_and_its_gradient():
    logits = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 5, (3,))
    _, _, spsq = logprob_entropy_from_logits(logits, targets, chunk_size=2, return_sum_p_sq=True)
    ref = torch.softmax(logits, -1).pow(2).sum(-1)
    assert torch.allclose(spsq, ref, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda z: logprob_entropy_from_logits(z, targets, chunk_size=2, return_sum_p_sq=True), (logits,)
    )


def test_half_precision_logits_are_upcast():
    logits32 = 4 * torch.randn(8, 33)
    targets = torch.randint(0, 33, (8,))
    logits16 = logits32.to(torch.bfloat16)
    logp, ent = logprob_entropy_from_logits(logits16, targets, chunk_size=3)
    ref_logp, ref_ent = naive_logprob_entropy(logits16.float(), targets)
    assert logp.dtype == torch.float32
    assert torch.allclose(logp, ref_logp, atol=1e-5) and torch.allclose(ent, ref_ent, atol=1e-5)


class _MaxFp32Numel(TorchDispatchMode):
    """Records the largest fp32 tensor any op produces."""

    def __init__(self):
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                self.max_numel = max(self.max_numel, t.numel())
        return out


def test_fp32_temporaries_bounded_by_chunk_for_bf16_logits():
    N, V, C = 40, 64, 4
    logits = torch.randn(N, V).to(torch.bfloat16).requires_grad_()
    targets = torch.randint(0, V, (N,))
    with _MaxFp32Numel() as mode:
        logp, ent = logprob_entropy_from_logits(logits, targets, chunk_size=C)
        (logp.sum() + ent.sum()).backward()
    assert logits.grad.dtype == torch.bfloat16 and torch.isfinite(logits.grad.float()).all()
    assert mode.max_numel == C * V  # the fp32 chunk, never the [N, V] fp32 copy
    with _MaxFp32Numel() as mode:
        naive_logprob_entropy(logits.detach(), targets)
    assert mode.max_numel == N * V  # the tracker does see a full copy when there is one


def test_ignore_index_gives_zero_logp_and_no_grad():
    logits = torch.randn(3, 5, requires_grad=True)
    targets = torch.tensor([1, -100, 4])
    logp, _ = logprob_entropy_from_logits(logits, targets)
    assert logp[1].item() == 0.0
    logp.sum().backward()
    assert torch.all(logits.grad[1] == 0)
    assert torch.any(logits.grad[0] != 0)


@pytest.mark.parametrize("checkpoint", [False, True])
def test_hidden_path_matches_naive_values_and_grads(checkpoint):
    N, D, V = 11, 6, 23
    hidden = torch.randn(N, D, requires_grad=True)
    weight = torch.randn(V, D, requires_grad=True)
    bias = torch.randn(V, requires_grad=True)
    targets = torch.randint(0, V, (N,))
    g1, g2 = torch.randn(N), torch.randn(N)

    logp, ent = logprob_entropy_from_hidden(
        hidden, weight, targets, chunk_size=4, lm_head_bias=bias, checkpoint=checkpoint
    )
    grads = torch.autograd.grad((logp * g1).sum() + (ent * g2).sum(), (hidden, weight, bias))

    ref_logp, ref_ent = naive_logprob_entropy(hidden @ weight.T + bias, targets)
    ref_grads = torch.autograd.grad((ref_logp * g1).sum() + (ref_ent * g2).sum(), (hidden, weight, bias))

    assert torch.allclose(logp, ref_logp, atol=1e-5) and torch.allclose(ent, ref_ent, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-5)


def test_checkpoint_keeps_no_full_logits_for_backward():
    # With checkpointing the saved tensors are only the chunk inputs: nothing of size N·V survives to backward.
    N, D, V = 64, 4, 512
    hidden = torch.randn(N, D, requires_grad=True)
    weight = torch.randn(V, D, requires_grad=True)
    targets = torch.randint(0, V, (N,))
    saved: list[int] = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logprob_entropy_from_hidden(hidden, weight, targets, chunk_size=8, checkpoint=True)
    # D < chunk, so any tensor of >= chunk·V elements would be a [C, V] logits chunk (or bigger): none is kept.
    assert saved and all(n < 8 * V for n in saved)
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logprob_entropy_from_hidden(hidden, weight, targets, chunk_size=8, checkpoint=False)
    assert sum(n for n in saved if n == 8 * V) == N * V  # without checkpoint every chunk's logits are kept


def test_grad_norm_closed_form_matches_autograd():
    logits = torch.randn(7, 13, dtype=torch.float64)
    targets = torch.randint(0, 13, (7,))
    norms = logit_grad_norm_from_logits(logits, targets, chunk_size=3)
    for i in range(7):
        z = logits[i].clone().requires_grad_()
        torch.log_softmax(z, -1)[targets[i]].backward()
        assert abs(norms[i].item() - z.grad.norm().item()) < 1e-10


def test_grad_norm_hand_values():
    # One-hot on the target: gradient 0. Uniform over V with target in it: ‖e_y − 1/V‖² = 1 − 2/V + 1/V.
    assert logit_grad_norm(torch.tensor(1.0), torch.tensor(1.0)).item() == 0.0
    V = 4
    expected = math.sqrt(1 - 2 / V + 1 / V)
    got = logit_grad_norm_from_logits(torch.zeros(1, V), torch.tensor([0]))
    assert abs(got.item() - expected) < 1e-6


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        logprob_entropy_from_logits(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError):
        logprob_entropy_from_logits(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), chunk_size=0)


def test_chunk_size_one_is_valid_and_zero_is_refused_with_its_value():
    hidden, weight = torch.randn(3, 4), torch.randn(5, 4)
    targets = torch.tensor([0, 4, 2])
    logp, ent = logprob_entropy_from_hidden(hidden, weight, targets, chunk_size=1)
    ref_logp, ref_ent = naive_logprob_entropy(hidden @ weight.T, targets)
    assert torch.allclose(logp, ref_logp, atol=1e-6) and torch.allclose(ent, ref_ent, atol=1e-6)
    logits = hidden @ weight.T
    assert torch.allclose(logprob_entropy_from_logits(logits, targets, chunk_size=1)[0], ref_logp, atol=1e-6)
    for fn, args in ((logprob_entropy_from_hidden, (hidden, weight, targets)),
                     (logprob_entropy_from_logits, (logits, targets))):
        with pytest.raises(ValueError, match=r"^chunk_size must be >= 1, got 0$"):
            fn(*args, chunk_size=0)


def test_naive_reference_gives_masked_vocabulary_entries_no_entropy():
    logits = torch.tensor([[0.0, 0.0, -math.inf]])
    logp, ent = naive_logprob_entropy(logits, torch.tensor([0]))
    assert ent.item() == pytest.approx(math.log(2)) and logp.item() == pytest.approx(-math.log(2))


def _naive_three(z, targets):
    logp_all = torch.log_softmax(z, -1)
    p = logp_all.exp()
    ent = -torch.where(p > 0, p * logp_all, torch.zeros_like(p)).sum(-1)
    return logp_all.gather(-1, targets[:, None])[:, 0], ent, (p * p).sum(-1)


def test_backward_of_all_three_outputs_together_with_more_rows_than_vocabulary():
    """Gradients of log p, H and Σπ² flowing back at once (they add up in one chunk loop), over N = 10 rows of a
    vocabulary of V = 3 (every row must get its gradient, not only the first V)."""
    z = torch.randn(10, 3, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 3, (10,))
    w = torch.randn(3, 10, dtype=torch.float64)
    logp, ent, spsq = logprob_entropy_from_logits(z, targets, chunk_size=4, return_sum_p_sq=True)
    (g,) = torch.autograd.grad((w[0] * logp).sum() + (w[1] * ent).sum() + (w[2] * spsq).sum(), z)
    r_logp, r_ent, r_spsq = _naive_three(z, targets)
    (r,) = torch.autograd.grad((w[0] * r_logp).sum() + (w[1] * r_ent).sum() + (w[2] * r_spsq).sum(), z)
    torch.testing.assert_close(g, r)


def test_backward_through_a_masked_vocabulary_entry_is_finite():
    """A −inf logit (π = 0) contributes 0 to every gradient term, not 0·(−inf) = NaN."""
    z = torch.tensor([[0.5, -math.inf, 1.0], [2.0, 0.0, -math.inf]], dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 1])
    logp, ent, spsq = logprob_entropy_from_logits(z, targets, return_sum_p_sq=True)
    (g,) = torch.autograd.grad(logp.sum() + ent.sum() + spsq.sum(), z)
    assert torch.isfinite(g).all()
    # The same as a logit so low that π underflows to 0 (where the naive reference is finite too).
    low = torch.nan_to_num(z.detach(), neginf=-1e4).requires_grad_()
    r_logp, r_ent, r_spsq = _naive_three(low, targets)
    (r,) = torch.autograd.grad(r_logp.sum() + r_ent.sum() + r_spsq.sum(), low)
    torch.testing.assert_close(g, r)
