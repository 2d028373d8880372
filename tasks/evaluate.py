"""Steps of stage `evaluate@<name>` (flows/evaluate.py): greedy accuracy, avg@k and unbiased pass@k of one model on
the test prompts and benchmarks.

`name` is `base` (the base policy of `params.model`) or a trained variant with its study seed `s`
(`<train_dir>/<variant>/seed<s>/model`). Writes `<evaluate_dir>/<name>[/seed<s>]/samples.parquet` (`samples`
contract) and `<metrics_dir>/<name>[/seed<s>].json` (nested by dataset, for `dvc metrics diff`), both with lineage.
The base policy is not trained, so it has no seed. Every model samples with `evaluate.seed`: the same random numbers
for every model, which helps the paired comparisons.
"""

from __future__ import annotations

from pathlib import Path

from eapo.config import Params
from eapo.data import read_records
from eapo.evaluation import metrics_rows, sample_rows
from eapo.layout import BASE, train_paths
from eapo.policy import Policy
from eapo.reward import RewardScorer
from eapo.rollouts import sample_and_score
from tasks import stage_task
from tasks.publish import Markdown, Publication, Table, markdown_table
from tasks.rollout import first_prompts, load_base_policy, load_model_policy

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


def replicate(params: Params, name: str, seed: int | None) -> int | None:
    """The study seed evaluated: None for the base policy, else `seed` (default: the first of study.seeds)."""
    return params.study.seeds[0] if name != BASE and seed is None else seed


@stage_task(name="load-policy")
def load_model(params: Params, name: str, seed: int | None = None) -> Policy:
    """The base policy, or the checkpoint of variant `name` at study seed `seed`."""
    path = check_name(params, name, seed)
    if path is None:
        return load_base_policy(params)
    return load_model_policy(params, str(path))


@stage_task(name="load-datasets")
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


@stage_task(name="evaluate")
def evaluate_model(policy: Policy, sets: dict[str, list[dict]], params: Params, name: str) -> list[dict]:
    """The samples table: per dataset, the greedy response (with `evaluate.greedy`) and k sampled ones per prompt,
    scored."""
    cfg = params.evaluate
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
    return rows


def evaluate_inputs(params: Params, ckpt: Path | None) -> dict[str, str | Path]:
    """What the samples are made from: the test prompts, the checkpoint (not for the base policy), the benchmarks."""
    inputs: dict[str, str | Path] = {"prompts_test": params.paths.prompts_test}
    if ckpt is not None:
        inputs["model"] = ckpt
    inputs.update({f"benchmark:{b.name}": b.path for b in params.evaluate.benchmarks})
    return inputs


def publications(params: Params, label: str, identity: dict, out_samples: Path, out_metrics: Path,
                 metrics: dict) -> list[Publication]:
    cfg = params.evaluate
    table = metrics_rows(metrics)
    test = metrics[TEST]
    k = cfg.k
    return [
        Table(f"evaluate-{label}-metrics", table, f"Evaluation metrics of {label!r} per dataset"),
        Markdown(f"evaluate-{label}-summary", "\n".join([
            f"# evaluate: `{label}`", "",
            (f"- model: `{identity.get('checkpoint') or identity.get('name')}` ({identity.get('kind')}, "
             f"sha256 `{str(identity.get('sha256'))[:12]}`)"),
            (f"- test: greedy {test.get('greedy_acc', float('nan')):.3f}, "
             f"avg@{k} {test.get(f'avg@{k}', float('nan')):.3f}, "
             f"pass@{max(cfg.pass_k)} {test.get(f'pass@{max(cfg.pass_k)}', float('nan')):.3f} "
             f"over {test['prompts']} prompts"),
            f"- samples: `{out_samples}`; metrics: `{out_metrics}`", "",
            markdown_table(table)]), f"Evaluate stage summary ({label})"),
    ]
