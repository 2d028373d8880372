"""Steps of stage `prepare` (flows/prepare.py): the train/test prompt sets from the synthetic task and/or benchmark
files."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict

from eapo.config import Params
from eapo.data import (
    PromptRecord,
    check_no_leakage,
    dedupe,
    filter_records,
    generate,
    read_sources,
    split_train_test,
)
from tasks import stage_task
from tasks.publish import markdown_table

PARAMS_KEYS = ("prepare",)


def build_splits(params: Params) -> tuple[list[PromptRecord], list[PromptRecord], dict]:
    """All records, deduped and filtered, split into train/test with no test prompt in train."""
    cfg = params.prepare
    pinned: dict[str, list[PromptRecord]] = {"train": [], "test": []}
    free: list[PromptRecord] = []
    if cfg.synthetic.enabled:
        fams = cfg.synthetic.families
        free += generate(cfg.synthetic.n, families=list(fams), levels=fams, seed=cfg.synthetic.seed)
    for src, records in zip(cfg.sources, read_sources(cfg.sources)):  # ids unique across sources
        (free if src.split == "both" else pinned[src.split]).extend(records)
    # Dedupe across everything at once so a prompt pinned to test cannot also land in train.
    ordered = pinned["test"] + pinned["train"] + free
    unique, dropped = dedupe(ordered)
    unique = filter_records(unique, max_prompt_chars=cfg.max_prompt_chars)
    keep = {r.id for r in unique}
    pinned = {k: [r for r in v if r.id in keep] for k, v in pinned.items()}
    pinned_ids = {r.id for v in pinned.values() for r in v}
    free = [r for r in unique if r.id not in pinned_ids]
    train, test = split_train_test(free, cfg.test_fraction, cfg.seed) if free else ([], [])
    train, test = sorted(train + pinned["train"], key=lambda r: r.id), sorted(test + pinned["test"], key=lambda r: r.id)
    check_no_leakage(train, test)
    return train, test, {"duplicates_dropped": dropped}


split_prompts = stage_task(name="prepare")(build_splits)


def prompt_rows(records: list[PromptRecord], split: str) -> list[dict]:
    """The rows of a prompts artifact."""
    return [{**asdict(r), "split": split} for r in records]


def source_counts(train: list[PromptRecord], test: list[PromptRecord]) -> list[dict]:
    """Prompts per (source, split), sorted."""
    counts = Counter((r.source, split) for split, rs in (("train", train), ("test", test)) for r in rs)
    return [{"source": s, "split": sp, "prompts": n} for (s, sp), n in sorted(counts.items())]


def summary_markdown(params: Params, summary: dict) -> str:
    p = params.paths
    return "\n".join([
        "# prepare", "", f"- train: **{summary['train']}** prompts -> `{p.prompts_train}`",
        f"- test: **{summary['test']}** prompts -> `{p.prompts_test}`",
        f"- duplicates dropped: {summary['duplicates_dropped']}", "", markdown_table(summary["per_source"])])
