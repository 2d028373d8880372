"""eapo.annotate.annotate_rollouts: the annotate stage's token annotation is the training step's `annotate_batch`, and
its numbers are the ones the stage computed with its own chain before (issue 13), bit for bit."""

import numpy as np
import pytest
import torch

from eapo.annotate import annotate_rollouts
from eapo.core.advantages import get_advantage_fn
from eapo.core.credit import annotate_batch
from eapo.core.entropy import logit_grad_norm
from eapo.core.quadrants import assign_quadrants, entropy_threshold, quadrant_names, quadrant_stats
from eapo.core.weighting import build_weighting


def _rollouts(seed: int = 0) -> dict[str, list]:
    """A rollouts column dict as `pyarrow.Table.to_pydict` gives it: 3 prompts x 4 responses, one all-equal group."""
    rng = np.random.default_rng(seed)
    cols: dict[str, list] = {k: [] for k in ("prompt_id", "reward", "response_ids", "entropies", "logprobs",
                                             "sum_p_sq")}
    for g, rewards in enumerate(([1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.3, 1.0, 0.0, 0.7])):
        for r in rewards:
            n = int(rng.integers(1, 30))
            p = rng.uniform(0.01, 1.0, n).astype(np.float32)
            cols["prompt_id"].append(f"p{g}")
            cols["reward"].append(float(np.float32(r)))
            cols["response_ids"].append(rng.integers(0, 1000, n).tolist())
            cols["entropies"].append(rng.gamma(1.0, 1.0, n).astype(np.float32).tolist())
            cols["logprobs"].append(np.log(p).astype(np.float32).tolist())
            cols["sum_p_sq"].append((p * p + rng.uniform(0, 1, n).astype(np.float32) * (1 - p * p)).tolist())
    return cols


def _former_chain(cols: dict[str, list], advantage: str, rho: float, tau: float | None):
    """The annotate stage's own computation before it used annotate_batch (float64 advantages and gradient proxy,
    rounded to float32)."""
    rewards = torch.tensor(cols["reward"], dtype=torch.float64)
    adv = get_advantage_fn(advantage)(rewards, list(cols["prompt_id"])).numpy()
    lengths = np.array([len(x) for x in cols["response_ids"]])
    seq = np.repeat(np.arange(len(lengths)), lengths)
    h = torch.from_numpy(np.concatenate(cols["entropies"]).astype(np.float32))
    adv_tok = torch.from_numpy(adv[seq].astype(np.float32))
    if tau is None:
        tau = entropy_threshold(h, None, rho)
    codes = assign_quadrants(h, adv_tok, tau)
    grad = logit_grad_norm(torch.from_numpy(np.concatenate(cols["logprobs"]).astype(np.float32)).double().exp(),
                           torch.from_numpy(np.concatenate(cols["sum_p_sq"]).astype(np.float32)).double()).float()
    return float(tau), adv_tok.numpy(), quadrant_names(codes), grad.numpy(), quadrant_stats(h, adv_tok, codes, grad)


@pytest.mark.parametrize(("advantage", "rho", "tau"), [("grpo", 0.2, None), ("rloo", 0.5, None), ("grpo", 0.2, 0.8)])
def test_annotate_rollouts_gives_the_former_numbers_bit_for_bit(advantage, rho, tau):
    cols = _rollouts()
    got = annotate_rollouts(cols, advantage, rho, tau)
    want_tau, want_adv, want_labels, want_grad, want_stats = _former_chain(cols, advantage, rho, tau)
    assert got.tau == want_tau
    assert got.flat.advantage.dtype == np.float32 and np.array_equal(got.flat.advantage, want_adv)
    assert got.grad_norm.dtype == np.float32 and np.array_equal(got.grad_norm, want_grad)
    assert got.labels == want_labels
    assert got.stats == want_stats
    assert "none" in got.labels and len(set(got.labels)) > 2  # the all-equal group, and real quadrants
    np.testing.assert_array_equal(got.flat.seq, np.repeat(np.arange(12), [len(x) for x in cols["response_ids"]]))


def test_annotate_batch_fixed_tau_and_grad_norm_dtype():
    """`tau` replaces the batch quantile; `grad_norm_dtype` computes ‖∇‖ wider and rounds back, while the default
    (the trainer's) stays in the inputs' dtype."""
    cols = _rollouts(1)
    ent = torch.tensor(np.concatenate(cols["entropies"]), dtype=torch.float32)
    logp = torch.tensor(np.concatenate(cols["logprobs"]), dtype=torch.float32)
    spsq = torch.tensor(np.concatenate(cols["sum_p_sq"]), dtype=torch.float32)
    lengths = torch.tensor([len(x) for x in cols["response_ids"]])
    args = (ent, logp, spsq, lengths, torch.tensor(cols["reward"]), list(cols["prompt_id"]))
    kw = {"advantage_fn": get_advantage_fn("grpo"), "weighting": build_weighting("none"), "rho": 0.2}
    default, wide = annotate_batch(*args, **kw), annotate_batch(*args, **kw, grad_norm_dtype=torch.float64)
    assert torch.equal(default.grad_norm, logit_grad_norm(logp.exp(), spsq))
    assert wide.grad_norm.dtype == torch.float32
    assert torch.equal(wide.grad_norm, logit_grad_norm(logp.double().exp(), spsq.double()).float())
    assert not torch.equal(default.grad_norm, wide.grad_norm)  # the option changes numbers: callers pick on purpose
    fixed = annotate_batch(*args, **kw, tau=1.5)
    assert fixed.tau == 1.5 and default.tau == entropy_threshold(ent, None, 0.2) != 1.5
    high = (fixed.codes == 0) | (fixed.codes == 2)
    assert torch.equal(high, (ent >= 1.5) & (fixed.codes >= 0))
