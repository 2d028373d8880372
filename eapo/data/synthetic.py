"""Seeded, deterministic, verifiable arithmetic prompts: the pipeline's embedded default task.

Every family is a small function ``(rng, level) -> (question, answer)`` in the :data:`FAMILIES` registry; ``level``
sets the operand size. Operands of level ``n`` have ``n`` digits (level 1 is 0-9). Only a
``numpy.random.Generator`` seeded with ``seed`` is used, so the same arguments give the same records on any machine.

Calibration (SmolLM2-135M-Instruct, DESIGN §8): 1-digit add ≈ 53% greedy / 21% at T=1, 2-digit add ≈ 17% / 12%,
1×1 multiply ≈ 90% / 27%. The phrasing is kept short ("What is 7 + 5?") because that is what was measured.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from eapo.core.registry import Registry
from eapo.data.records import DataError, PromptRecord, dump_meta, make_id, normalize_prompt

__all__ = ["FAMILIES", "MAX_LEVEL", "MUL_DIGITS", "digit_range", "generate"]

SOURCE = "synthetic"
MAX_LEVEL = 9  # operands up to 10**9: sums and products stay far inside int64
MUL_DIGITS: dict[int, tuple[int, int]] = {1: (1, 1), 2: (2, 1), 3: (2, 2), 4: (3, 2), 5: (3, 3)}

Family = Callable[[np.random.Generator, int], tuple[str, str]]


def digit_range(digits: int) -> tuple[int, int]:
    """Inclusive bounds of ``digits``-digit operands; 1 digit is 0-9."""
    if not isinstance(digits, int) or isinstance(digits, bool) or not 1 <= digits <= MAX_LEVEL:
        raise DataError(f"digit count must be an int in 1..{MAX_LEVEL}, got {digits!r}")
    return (0 if digits == 1 else 10 ** (digits - 1)), 10**digits - 1


def _draw(rng: np.random.Generator, lo: int, hi: int) -> int:
    return int(rng.integers(lo, hi, endpoint=True, dtype=np.int64))


def _check_level(family: str, level: int, allowed: Sequence[int]) -> None:
    if isinstance(level, bool) or not isinstance(level, int) or level not in allowed:
        raise DataError(f"family {family!r} has no level {level!r}; levels: {list(allowed)}")


_PLAIN_LEVELS = range(1, MAX_LEVEL + 1)


def _add(rng: np.random.Generator, level: int) -> tuple[str, str]:
    """n-digit + n-digit."""
    _check_level("add", level, _PLAIN_LEVELS)
    lo, hi = digit_range(level)
    a, b = _draw(rng, lo, hi), _draw(rng, lo, hi)
    return f"What is {a} + {b}?", str(a + b)


def _sub(rng: np.random.Generator, level: int) -> tuple[str, str]:
    """n-digit − n-digit with a non-negative result."""
    _check_level("sub", level, _PLAIN_LEVELS)
    lo, hi = digit_range(level)
    a, b = _draw(rng, lo, hi), _draw(rng, lo, hi)
    if a < b:
        a, b = b, a
    return f"What is {a} - {b}?", str(a - b)


def _mul(rng: np.random.Generator, level: int) -> tuple[str, str]:
    """a × b with digit counts per level: 1×1, 2×1, 2×2, 3×2, 3×3."""
    _check_level("mul", level, sorted(MUL_DIGITS))
    da, db = MUL_DIGITS[level]
    a, b = _draw(rng, *digit_range(da)), _draw(rng, *digit_range(db))
    return f"What is {a} * {b}?", str(a * b)


def _chain(rng: np.random.Generator, level: int) -> tuple[str, str]:
    """a + b − c with n-digit operands and a non-negative result."""
    _check_level("chain", level, _PLAIN_LEVELS)
    lo, hi = digit_range(level)
    a, b = _draw(rng, lo, hi), _draw(rng, lo, hi)
    c = _draw(rng, lo, min(hi, a + b))
    return f"What is {a} + {b} - {c}?", str(a + b - c)


def _compare(rng: np.random.Generator, level: int) -> tuple[str, str]:
    """The larger of two distinct n-digit numbers."""
    _check_level("compare", level, _PLAIN_LEVELS)
    lo, hi = digit_range(level)
    a = _draw(rng, lo, hi)
    b = _draw(rng, lo, hi - 1)
    if b >= a:  # uniform over the values other than a
        b += 1
    return f"Which is larger: {a} or {b}?", str(max(a, b))


FAMILIES: Registry[Family] = Registry("synthetic family")
for _name, _fn in (("add", _add), ("sub", _sub), ("mul", _mul), ("chain", _chain), ("compare", _compare)):
    FAMILIES.register(_name)(_fn)


def _family_weights(families: Mapping[str, float] | Sequence[str]) -> dict[str, float]:
    if isinstance(families, str):
        families = [families]
    if isinstance(families, Mapping):
        weights = dict(families)
    else:
        names = list(families)
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise DataError(f"families listed more than once: {dupes}")
        weights = {name: 1.0 for name in names}
    unknown = [name for name in weights if name not in FAMILIES]
    if unknown:
        raise DataError(f"unknown synthetic families {unknown}; known: {sorted(FAMILIES)}")
    for name, weight in weights.items():
        if (
            isinstance(weight, bool)
            or not isinstance(weight, (int, float))
            or not math.isfinite(weight)
            or weight < 0
        ):
            raise DataError(f"family {name!r} weight must be a finite number >= 0, got {weight!r}")
    weights = {name: float(w) for name, w in weights.items() if w > 0}
    if not weights:
        raise DataError("no synthetic family with a positive weight")
    return weights


def _as_level_list(value: int | Sequence[int], family: str) -> list[int]:
    levels = [value] if isinstance(value, int) else list(value)
    if not levels:
        raise DataError(f"family {family!r} has an empty level list")
    if len(set(levels)) != len(levels):
        raise DataError(f"family {family!r} lists a level more than once: {levels}")
    return levels


def _family_levels(
    weights: Mapping[str, float], levels: int | Sequence[int] | Mapping[str, int | Sequence[int]]
) -> dict[str, list[int]]:
    if isinstance(levels, Mapping):
        missing = [name for name in weights if name not in levels]
        if missing:
            raise DataError(f"levels gives no levels for families {missing}")
        extra = [name for name in levels if name not in FAMILIES]
        if extra:
            raise DataError(f"levels names unknown families {extra}; known: {sorted(FAMILIES)}")
        return {name: _as_level_list(levels[name], name) for name in weights}
    return {name: _as_level_list(levels, name) for name in weights}


def _allocate(n: int, cells: list[tuple[str, int, float]]) -> list[int]:
    """Split ``n`` over cells in proportion to their weights: floors, then the largest remainders (ties: cell order)."""
    total = sum(w for _, _, w in cells)
    quotas = [n * w / total for _, _, w in cells]
    counts = [math.floor(q) for q in quotas]
    left = n - sum(counts)
    order = sorted(range(len(cells)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[:left]:
        counts[i] += 1
    return counts


def generate(
    n: int,
    families: Mapping[str, float] | Sequence[str] = ("add",),
    levels: int | Sequence[int] | Mapping[str, int | Sequence[int]] = (1,),
    seed: int = 0,
    *,
    max_tries: int | None = None,
) -> list[PromptRecord]:
    """``n`` distinct arithmetic prompts, deterministic in the arguments.

    - ``families``: names (equal weights) or ``{name: weight}``; zero weights are skipped.
    - ``levels``: one level, a list for every family, or ``{family: level or list}``.
    - Each family's share is split equally over its levels; counts per (family, level) are exact (largest remainder).
    - Prompts never repeat within one call: a collision is redrawn, at most ``max_tries`` draws per (family, level)
      (default ``1000 + 30 × count``); when that runs out, the space is too small and a :class:`DataError` names the
      family and level.
    - The output order is shuffled with the same generator, so families interleave.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise DataError(f"n must be an int >= 0, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"seed must be an int >= 0, got {seed!r}")
    weights = _family_weights(families)
    per_family = _family_levels(weights, levels)
    cells = [(name, lvl, weights[name] / len(lvls)) for name, lvls in per_family.items() for lvl in lvls]
    counts = _allocate(n, cells)

    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    out: list[PromptRecord] = []
    for (name, level, _), count in zip(cells, counts):
        fn = FAMILIES[name]
        budget = max_tries if max_tries is not None else 1000 + 30 * count
        made = draws = 0
        while made < count:
            if draws >= budget:
                raise DataError(
                    f"family {name!r} level {level}: drew only {made} distinct prompts of the {count} asked for "
                    f"in {draws} tries; the space of level-{level} {name!r} prompts is too small for n={n}. "
                    "Ask for fewer prompts or add levels/families."
                )
            draws += 1
            question, answer = fn(rng, level)
            key = normalize_prompt(question)
            if key in seen:
                continue
            seen.add(key)
            made += 1
            out.append(
                PromptRecord(
                    id=make_id(SOURCE, question),
                    source=SOURCE,
                    prompt=question,
                    answer=answer,
                    difficulty=f"{name}-{level}",
                    family=name,
                    meta=dump_meta({"family": name, "level": level, "seed": seed}),
                )
            )
    order = rng.permutation(len(out))
    return [out[i] for i in order]
