"""Dedupe, filter, seeded train/test split and a leakage check over prompt records.

"The same prompt" always means the same normalised prompt (:func:`eapo.data.records.normalize_prompt`: NFKC,
whitespace collapsed, casefolded).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from eapo.data.records import DataError, PromptRecord, normalize_prompt

__all__ = ["check_no_leakage", "dedupe", "filter_records", "split_train_test"]


def dedupe(records: Iterable[PromptRecord]) -> tuple[list[PromptRecord], int]:
    """Drop records whose normalised prompt was seen before (the first occurrence wins, order kept).

    Returns the kept records and how many were dropped.
    """
    seen: set[str] = set()
    kept: list[PromptRecord] = []
    dropped = 0
    for record in records:
        key = normalize_prompt(record.prompt)
        if key in seen:
            dropped += 1
            continue
        seen.add(key)
        kept.append(record)
    return kept, dropped


def filter_records(
    records: Iterable[PromptRecord],
    max_prompt_chars: int | None = None,
    sources: Iterable[str] | None = None,
) -> list[PromptRecord]:
    """Keep records whose prompt has at most ``max_prompt_chars`` characters and whose source is in ``sources``.

    ``None`` disables a criterion. Raises :class:`DataError` when no record is left.
    """
    records = list(records)
    if max_prompt_chars is not None and (
        isinstance(max_prompt_chars, bool) or not isinstance(max_prompt_chars, int) or max_prompt_chars < 1
    ):
        raise DataError(f"max_prompt_chars must be an int >= 1 or None, got {max_prompt_chars!r}")
    if isinstance(sources, str):
        sources = [sources]
    wanted = None if sources is None else set(sources)
    kept = [
        r
        for r in records
        if (max_prompt_chars is None or len(r.prompt) <= max_prompt_chars)
        and (wanted is None or r.source in wanted)
    ]
    if not kept:
        present = sorted({r.source for r in records})
        raise DataError(
            f"zero rows after filtering {len(records)} records (max_prompt_chars={max_prompt_chars}, "
            f"sources={sorted(wanted) if wanted is not None else None}; sources present: {present})"
        )
    return kept


def _sort_key(record: PromptRecord) -> tuple[str, ...]:
    return (
        record.id,
        record.source,
        record.prompt,
        record.answer,
        record.difficulty,
        record.family,
        record.meta,
    )


def split_train_test(
    records: Sequence[PromptRecord], test_fraction: float, seed: int
) -> tuple[list[PromptRecord], list[PromptRecord]]:
    """A seeded split into (train, test).

    The records are sorted by id (then by all fields) before a ``numpy`` permutation with ``seed``, so the result does
    not depend on the input order. The test set gets ``round(n × test_fraction)`` records, at least 1 and at most
    n − 1. Dedupe first: duplicate prompts could otherwise land on both sides (see :func:`check_no_leakage`).
    """
    if (
        isinstance(test_fraction, bool)
        or not isinstance(test_fraction, (int, float))
        or not 0 < test_fraction < 1
    ):
        raise DataError(f"test_fraction must be a number strictly between 0 and 1, got {test_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"seed must be an int >= 0, got {seed!r}")
    ordered = sorted(records, key=_sort_key)
    n = len(ordered)
    if n < 2:
        raise DataError(f"need at least 2 records to split into train and test, got {n}")
    n_test = min(n - 1, max(1, round(n * test_fraction)))
    perm = np.random.default_rng(seed).permutation(n)
    test = [ordered[i] for i in perm[:n_test]]
    train = [ordered[i] for i in perm[n_test:]]
    return train, test


def check_no_leakage(train: Iterable[PromptRecord], test: Iterable[PromptRecord]) -> None:
    """Raise :class:`DataError` naming the offending ids if a test prompt (normalised) or id also appears in train."""
    by_prompt: dict[str, str] = {}
    ids: set[str] = set()
    for record in train:
        by_prompt.setdefault(normalize_prompt(record.prompt), record.id)
        ids.add(record.id)
    for record in test:
        train_id = by_prompt.get(normalize_prompt(record.prompt))
        if train_id is not None:
            raise DataError(
                f"leakage: test record {record.id!r} has the same prompt as train record {train_id!r}: "
                f"{record.prompt[:80]!r}"
            )
        if record.id in ids:
            raise DataError(f"leakage: test record id {record.id!r} also appears in train")
