"""Stage `prepare`: build the train/test prompt sets from the synthetic task and/or benchmark files."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict

from prefect import task
from prefect.cache_policies import NO_CACHE

from eapo.config import Params
from eapo.contracts import write_artifact
from eapo.data import (
    PromptRecord,
    check_no_leakage,
    dedupe,
    filter_records,
    generate,
    read_sources,
    split_train_test,
)
from eapo.lineage import make_lineage, write_json_artifact
from eapo.stageio import StageOutputs
from tasks.publish import markdown_table, publish_markdown, publish_table, record_assets

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


@task(name="prepare", cache_policy=NO_CACHE)
def prepare_task(params: Params) -> dict:
    p = params.paths
    # All three outputs are replaced together, or (on any error) none is; a second prepare run fails at once.
    with StageOutputs("prepare", [p.prompts_train, p.prompts_test, p.prepare_summary]) as staged:
        train, test, info = build_splits(params)
        lineage = make_lineage("prepare", params.subset(*PARAMS_KEYS), seed=params.prepare.seed,
                               extra={"sources": [s.path for s in params.prepare.sources]})
        out = {}
        for split, records, path in (("train", train, p.prompts_train), ("test", test, p.prompts_test)):
            rows = [{**asdict(r), "split": split} for r in records]
            write_artifact(rows, staged.path(path), "prompts", lineage)
            out[split] = path
        counts = Counter((r.source, split) for split, rs in (("train", train), ("test", test)) for r in rs)
        table = [{"source": s, "split": sp, "prompts": n} for (s, sp), n in sorted(counts.items())]
        summary = {"train": len(train), "test": len(test), **info, "per_source": table}
        write_json_artifact(staged.path(p.prepare_summary), summary, lineage)
    record_assets([params.paths.prompts_train, params.paths.prompts_test], [s.path for s in params.prepare.sources],
                  "prepare")
    publish_table("prepare-counts", table, "Prompts per source and split")
    publish_markdown("prepare-summary", "\n".join([
        "# prepare", "", f"- train: **{len(train)}** prompts -> `{out['train']}`",
        f"- test: **{len(test)}** prompts -> `{out['test']}`", f"- duplicates dropped: {info['duplicates_dropped']}",
        "", markdown_table(table)]), "Prompt sets written by the prepare stage")
    return summary
