"""Stage `evaluate@<name>`: greedy accuracy, avg@k and unbiased pass@k of one model on the test prompts and benchmarks.

`name` is `base` (the base policy of `params.model`) or a trained variant with its study seed `s`
(`<train_dir>/<variant>/seed<s>/model`). Writes `<evaluate_dir>/<name>[/seed<s>]/samples.parquet` (`samples`
contract) and `<metrics_dir>/<name>[/seed<s>].json` (nested by dataset, for `dvc metrics diff`), both with lineage.
The base policy is not trained, so it has no seed. Every model samples with `evaluate.seed`: the same random numbers
for every model, which helps the paired comparisons.
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
from eapo.layout import BASE, metrics_path, samples_path, train_paths
from eapo.lineage import make_lineage, write_json_artifact
from eapo.policy import load_policy
from eapo.reward import RewardScorer
from eapo.rollouts import sample_and_score
from eapo.stageio import StageOutputs
from tasks.publish import markdown_table, publish_markdown, publish_table, record_assets
from tasks.rollout import apply_job_threads, first_prompts, load_base_policy, model_cache_dir

PARAMS_KEYS = ("model", "evaluate", "reward")
TEST = "test"


def check_name(params: Params, name: str, seed: int | None = None) -> Path | None:
    """The checkpoint directory of `name` at study seed `seed` (None for the base policy, which takes no seed); a
    clear error when it is unknown or missing."""
    if name == BASE:
        if seed is not None:
            raise ValueError(f"{BASE!r} is the untrained policy: it has no study seed (got --seed {seed})")
        return None
    if name not in params.study.variants:
        raise ValueError(f"unknown model name {name!r}: expected {BASE!r} or one of study.variants "
                         f"{list(params.study.variants)}")
    if seed is None:
        seed = params.study.seeds[0]
    if seed not in params.study.seeds:
        raise ValueError(f"seed {seed} is not in study.seeds {list(params.study.seeds)}")
    path = train_paths(params, name, seed)["model"]
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no trained checkpoint for variant {name!r} seed {seed} "
                                f"(run `dvc repro train@{name}-{seed}`)")
    return path


def load_model(params: Params, name: str, seed: int | None = None):
    path = check_name(params, name, seed)
    if path is None:
        return load_base_policy(params)
    apply_job_threads(params)
    m = params.model
    return load_policy(str(path), dtype=m.dtype, device=m.device, cache_dir=model_cache_dir(params), seed=m.seed)


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
def evaluate_task(params: Params, name: str, seed: int | None = None) -> dict:
    """Evaluate `base` (seed None) or variant `name` trained as study replicate `seed` (default: the first of
    study.seeds)."""
    ckpt = check_name(params, name, seed)  # fail before loading anything
    if name != BASE and seed is None:
        seed = params.study.seeds[0]
    label = name if seed is None else f"{name}-{seed}"
    out_samples, out_metrics = samples_path(params, name, seed), metrics_path(params, name, seed)
    # The samples and the metrics are replaced together, or neither is; a second run for this model fails at once.
    with StageOutputs(f"evaluate@{label}", [out_samples, out_metrics]) as staged:
        metrics, inputs, identity, policy = _evaluate(params, name, seed, ckpt, staged)
    return _publish(params, label, ckpt, out_samples, out_metrics, metrics, inputs, identity, policy)


def _evaluate(params: Params, name: str, seed: int | None, ckpt: Path | None, staged: StageOutputs):
    """Sample, score and write the samples and metrics into the staging area; the caller commits them together."""
    cfg = params.evaluate
    sets = datasets(params)
    policy = load_model(params, name, seed)
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
                           extra={"model": identity, "model_name": name, "study_seed": seed})
    write_artifact(rows, staged.path(samples_path(params, name, seed)), "samples", lineage)
    metrics = compute_metrics(pd.DataFrame(rows, columns=list(SAMPLE_COLUMNS)), cfg.pass_k)
    write_json_artifact(staged.path(metrics_path(params, name, seed)), metrics, lineage)
    return metrics, inputs, identity, policy


def _publish(params: Params, label: str, ckpt: Path | None, out_samples: Path, out_metrics: Path, metrics: dict,
             inputs: dict, identity: dict, policy) -> dict:
    cfg = params.evaluate
    base_model = [] if ckpt else [policy.info.get("path") or params.model.name_or_path]
    record_assets([out_samples, out_metrics], [*inputs.values(), *base_model], f"evaluate-{label}")
    table = metrics_rows(metrics)
    publish_table(f"evaluate-{label}-metrics", table, f"Evaluation metrics of {label!r} per dataset")
    test = metrics[TEST]
    k = cfg.k
    publish_markdown(f"evaluate-{label}-summary", "\n".join([
        f"# evaluate: `{label}`", "",
        (f"- model: `{identity.get('checkpoint') or identity.get('name')}` ({identity.get('kind')}, "
        f"sha256 `{str(identity.get('sha256'))[:12]}`)"),
        (f"- test: greedy {test.get('greedy_acc', float('nan')):.3f}, "
        f"avg@{k} {test.get(f'avg@{k}', float('nan')):.3f}, "
        f"pass@{max(cfg.pass_k)} {test.get(f'pass@{max(cfg.pass_k)}', float('nan')):.3f} "
        f"over {test['prompts']} prompts"),
        f"- samples: `{out_samples}`; metrics: `{out_metrics}`", "",
        markdown_table(table)]), f"Evaluate stage summary ({label})")
    return metrics
