"""Stage `evaluate@<name>`: greedy accuracy, avg@k and unbiased pass@k of one model on the test prompts and benchmarks.

`name` is `base` (the base policy of `params.model`) or a trained variant (`<train_dir>/<variant>/model`). Writes
`<evaluate_dir>/<name>/samples.parquet` (`samples` contract) and `<metrics_dir>/<name>.json` (nested by dataset, for
`dvc metrics diff`), both with lineage.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from eapo.config import Params
from eapo.contracts import write_artifact
from eapo.data import read_records
from eapo.evaluation import SAMPLE_COLUMNS, compute_metrics, metrics_rows, sample_rows
from eapo.lineage import make_lineage, write_json_artifact
from eapo.policy import load_policy, set_threads
from eapo.reward import RewardScorer
from eapo.rollouts import sample_and_score
from tasks.publish import markdown_table, publish_markdown, publish_table, record_assets
from tasks.rollout import first_prompts, load_base_policy

PARAMS_KEYS = ("model", "evaluate", "reward")
BASE = "base"
TEST = "test"


def model_dir(params: Params, name: str) -> Path:
    return Path(params.paths.train_dir) / name / "model"


def samples_path(params: Params, name: str) -> Path:
    return Path(params.paths.evaluate_dir) / name / "samples.parquet"


def metrics_path(params: Params, name: str) -> Path:
    return Path(params.paths.metrics_dir) / f"{name}.json"


def check_name(params: Params, name: str) -> Path | None:
    """The checkpoint directory of `name` (None for the base policy); a clear error when it is unknown or missing."""
    if name == BASE:
        return None
    if name not in params.study.variants:
        raise ValueError(f"unknown model name {name!r}: expected {BASE!r} or one of study.variants "
                         f"{list(params.study.variants)}")
    path = model_dir(params, name)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no trained checkpoint for variant {name!r} (run `dvc repro train@{name}`)")
    return path


def load_model(params: Params, name: str):
    path = check_name(params, name)
    if path is None:
        return load_base_policy(params)
    set_threads(params.model.threads)
    m = params.model
    return load_policy(str(path), dtype=m.dtype, device=m.device, cache_dir=params.paths.model_cache, seed=m.seed)


def datasets(params: Params) -> dict[str, list[dict]]:
    """Dataset name -> prompts ({id, prompt, answer}): the test split first, then each configured benchmark."""
    cfg = params.evaluate
    out = {TEST: first_prompts(params.paths.prompts_test, cfg.num_prompts)}
    for b in cfg.benchmarks:
        if b.name in out:
            raise ValueError(f"evaluate.benchmarks: dataset name {b.name!r} is used twice (or clashes with 'test')")
        records = read_records(b.path, b.kind, name=b.name, fields=b.fields, limit=b.limit)
        out[b.name] = [{"id": r.id, "prompt": r.prompt, "answer": r.answer} for r in records]
    empty = [n for n, rows in out.items() if not rows]
    if empty:
        raise ValueError(f"evaluate: dataset(s) {empty} have no prompts")
    return out


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(params: Params, name: str) -> dict:
    cfg = params.evaluate
    ckpt = check_name(params, name)  # fail before loading anything
    sets = datasets(params)
    policy = load_model(params, name)
    rows: list[dict] = []
    with RewardScorer.from_config(params.reward) as scorer:
        for ds, prompts in sets.items():
            texts, golds = [p["prompt"] for p in prompts], [p["answer"] for p in prompts]
            if cfg.greedy:
                scored, _ = sample_and_score(policy, texts, golds, cfg, params.model, scorer, n=1, seed=cfg.seed,
                                             temperature=0.0)
                rows += sample_rows(scored, prompts, model=name, dataset=ds, mode="greedy")
            scored, _ = sample_and_score(policy, texts, golds, cfg, params.model, scorer, n=cfg.k, seed=cfg.seed)
            rows += sample_rows(scored, prompts, model=name, dataset=ds, mode="sample")

    inputs: dict[str, str | Path] = {"prompts_test": params.paths.prompts_test}
    if ckpt is not None:
        inputs["model"] = ckpt
    inputs.update({f"benchmark:{b.name}": b.path for b in cfg.benchmarks})
    identity = {"name": name, "checkpoint": str(ckpt) if ckpt else None, **policy.info}
    lineage = make_lineage("evaluate", params.subset(*PARAMS_KEYS), inputs=inputs, seed=cfg.seed,
                           extra={"model": identity, "model_name": name})
    out_samples = samples_path(params, name)
    write_artifact(rows, out_samples, "samples", lineage)

    frame = pd.DataFrame(rows, columns=list(SAMPLE_COLUMNS))
    metrics = compute_metrics(frame)
    write_json_artifact(metrics_path(params, name), metrics, lineage)

    base_model = [] if ckpt else [policy.info.get("path") or params.model.name_or_path]
    record_assets([out_samples, metrics_path(params, name)], [*inputs.values(), *base_model], f"evaluate-{name}")
    table = metrics_rows(metrics)
    publish_table(f"evaluate-{name}-metrics", table, f"Evaluation metrics of {name!r} per dataset")
    test = metrics[TEST]
    k = cfg.k
    publish_markdown(f"evaluate-{name}-summary", "\n".join([
        f"# evaluate: `{name}`", "",
        (f"- model: `{identity.get('checkpoint') or identity.get('name')}` ({identity.get('kind')}, "
        f"sha256 `{str(identity.get('sha256'))[:12]}`)"),
        (f"- test: greedy {test.get('greedy_acc', float('nan')):.3f}, "
        f"avg@{k} {test.get(f'avg@{k}', float('nan')):.3f}, "
        f"pass@{k} {test.get(f'pass@{k}', float('nan')):.3f} over {test['prompts']} prompts"),
        f"- samples: `{out_samples}`; metrics: `{metrics_path(params, name)}`", "",
        markdown_table(table)]), f"Evaluate stage summary ({name})")
    return metrics
