"""The order in which training visits its prompts, shared by the trainer (which prompts step s trains on) and the
rollout stage (which rolls out the prompts of step 0, so that step 0 can reuse those samples)."""

from __future__ import annotations

import numpy as np


def step_prompt_indices(n_prompts: int, prompts_per_step: int, seed: int, step: int) -> list[int]:
    """Indices of the prompts of ``step``: position i = step·P + j walks epoch i // n of a per-epoch permutation
    seeded by (seed, epoch). Depends only on (n, P, seed, step); each epoch visits every prompt once."""
    out = []
    for i in range(step * prompts_per_step, (step + 1) * prompts_per_step):
        epoch, pos = divmod(i, n_prompts)
        perm = np.random.default_rng([seed, epoch]).permutation(n_prompts)
        out.append(int(perm[pos]))
    return out
