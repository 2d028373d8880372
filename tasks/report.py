"""Stage `report`: I/O only. Reads every model's metrics and samples, each variant's training steps and annotate's
quadrant stats and CMI probe; `eapo.report.build_report` computes; this writes `report.md`, PNG plots and the CSV/JSON
data files for `dvc plots` / `dvc metrics` into `paths.report_dir`."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from eapo import plots
from eapo.config import Params
from eapo.contracts import read_artifact
from eapo.layout import BASE, metrics_path, samples_path, train_paths
from eapo.lineage import make_lineage, read_lineage, write_json_artifact, write_sidecar
from eapo.report import Boot, ReportInputs, build_report
from eapo.stageio import StageOutputs, atomic_file
from tasks.publish import publish_links, publish_markdown, publish_table, record_assets

PARAMS_KEYS = ("report", "study")
PNG_FILES = ("reward_curves.png", "entropy_curves.png", "accuracy.png", "quadrant_shares.png")
DATA_FILES = ("curves.csv", "accuracy.csv", "summary.json")


def steps_path(params: Params, variant: str, seed: int) -> Path:
    return train_paths(params, variant, seed)["steps"]


def required_inputs(params: Params) -> dict[str, Path]:
    """Every input the report needs, by name: `samples:base`, `samples:<variant>@seed<s>`, `steps:<variant>@seed<s>`,
    ... over study.variants x study.seeds."""
    inputs: dict[str, Path] = {f"metrics:{BASE}": metrics_path(params, BASE),
                               f"samples:{BASE}": samples_path(params, BASE)}
    for v in params.study.variants:
        for sd in params.study.seeds:
            inputs[f"metrics:{v}@seed{sd}"] = metrics_path(params, v, sd)
            inputs[f"samples:{v}@seed{sd}"] = samples_path(params, v, sd)
    for v in params.study.variants:
        for sd in params.study.seeds:
            inputs[f"steps:{v}@seed{sd}"] = steps_path(params, v, sd)
    inputs["quadrant_stats"] = Path(params.paths.quadrant_stats)
    inputs["cmi"] = Path(params.paths.cmi)
    return inputs


def check_inputs(inputs: dict[str, Path]) -> None:
    missing = [f"  - {p} ({name})" for name, p in inputs.items() if not p.is_file()]
    if missing:
        raise FileNotFoundError("report: missing input file(s) (a variant or seed not trained/evaluated? run "
                                "`dvc repro`):\n" + "\n".join(missing))


def load_inputs(params: Params) -> tuple[ReportInputs, dict[str, Path]]:
    paths = required_inputs(params)
    check_inputs(paths)
    variants, seeds = params.study.variants, params.study.seeds
    samples: dict = {BASE: read_artifact(paths[f"samples:{BASE}"], "samples")[0].to_pandas()}
    metrics = {BASE: json.loads(paths[f"metrics:{BASE}"].read_text())}
    steps: dict = {}
    for v in variants:
        samples[v] = {sd: read_artifact(paths[f"samples:{v}@seed{sd}"], "samples")[0].to_pandas() for sd in seeds}
        metrics[v] = json.loads(paths[f"metrics:{v}@seed{seeds[0]}"].read_text())
        steps[v] = {sd: read_artifact(paths[f"steps:{v}@seed{sd}"], "steps")[0].to_pandas() for sd in seeds}
    cmi = read_artifact(paths["cmi"], "cmi")[0].to_pandas()
    stats = json.loads(paths["quadrant_stats"].read_text())
    lineages = {}
    for name, p in paths.items():
        if name.startswith("metrics:"):
            continue  # same lineage as the model's samples
        lin = read_lineage(p)
        lineages[name] = asdict(lin) if lin is not None else None
    return ReportInputs(samples=samples, metrics=metrics, steps=steps, quadrant_stats=stats, cmi=cmi,
                        lineages=lineages), paths


def write_csv(path: Path, rows) -> None:
    import pandas as pd

    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    with atomic_file(path) as tmp:
        frame.to_csv(tmp, index=False)


@task(name="report", cache_policy=NO_CACHE)
def report_task(params: Params) -> dict:
    cfg = params.report
    final = Path(params.paths.report_dir)
    files = [final / f for f in ("report.md", *DATA_FILES, *PNG_FILES)]
    # Every report file is replaced together, or none is; a second report run fails at once.
    with StageOutputs("report", files) as staged:
        inputs, paths = load_inputs(params)
        rep = build_report(inputs, boot=Boot(cfg.bootstrap, cfg.ci, cfg.seed), reward_threshold=cfg.reward_threshold)
        out = staged.path(final / "report.md").parent
        _write_outputs(params, rep, paths, out)
    md_path = final / "report.md"
    acc = rep.accuracy
    record_assets([md_path, final / "summary.json"], [p for k, p in paths.items()], "report")
    publish_markdown("report", rep.markdown, "EAPO study report: Four Quadrant ablation table and more")
    publish_table("report-accuracy", acc, "Test avg@k per model with bootstrap intervals")
    publish_table("report-claims", [{k: c[k] for k in ("id", "statement", "estimate", "lo", "hi", "p_holm", "verdict",
                                                          "mde", "seeds")} for c in rep.claims],
                  "The paper's claims: estimate, interval, Holm-adjusted p, verdict, minimum detectable effect")
    publish_links("report-plot", [final / f for f in PNG_FILES], "Report plots")
    return {"report": str(md_path), "summary": rep.summary}


def _write_outputs(params: Params, rep, paths: dict[str, Path], out: Path) -> None:
    """Plots, CSV/JSON data files and report.md into `out` (the staging folder of the report directory)."""
    cfg = params.report
    series = {v: (d["step"].tolist(), d["reward_mean"].tolist()) for v, d in rep.curves.groupby("variant", sort=False)}
    plots.curves(series, "training reward (mean)", out / "reward_curves.png", "Training reward per variant")
    series = {v: (d["step"].tolist(), d["entropy_mean"].tolist()) for v, d in rep.curves.groupby("variant", sort=False)}
    plots.curves(series, "token entropy (nats)", out / "entropy_curves.png", "Policy entropy per variant")
    acc = rep.accuracy
    plots.bars_with_ci([r["variant"] for r in acc], [r["acc"] for r in acc], [r["lo"] for r in acc],
                       [r["hi"] for r in acc], "test accuracy (avg@k)", out / "accuracy.png",
                       f"Test avg@k with {cfg.ci:.0%} bootstrap intervals")
    plots.quadrant_shares({q["quadrant"]: {"share": q["token_share"], "grad_share": q["grad_share"]}
                           for q in rep.quadrants}, out / "quadrant_shares.png")

    write_csv(out / "curves.csv", rep.curves)
    write_csv(out / "accuracy.csv", [{k: r[k] for k in ("variant", "acc", "lo", "hi", "greedy")} for r in acc])

    lineage = make_lineage("report", params.subset(*PARAMS_KEYS), inputs={k: v for k, v in paths.items()},
                           seed=cfg.seed)
    write_json_artifact(out / "summary.json", rep.summary, lineage)
    md_path = out / "report.md"
    with atomic_file(md_path) as tmp:
        tmp.write_text(rep.markdown + "\n")
    write_sidecar(md_path, lineage)
