"""Steps of stage `report` (flows/report.py), I/O only. Reads every model's metrics and samples, each variant's training
steps and annotate's quadrant stats and CMI probe; `eapo.report.build_report` computes; the outputs are `report.md`,
PNG plots and the CSV/JSON data files for `dvc plots` / `dvc metrics` in `paths.report_dir`."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from eapo import plots
from eapo.config import Params, ReportConfig
from eapo.contracts import read_artifact
from eapo.layout import BASE, metrics_path, samples_path, train_paths
from eapo.lineage import read_lineage
from eapo.report import Boot, Report, ReportInputs, build_report
from eapo.stageio import atomic_file
from tasks import stage_task
from tasks.publish import Links, Markdown, Publication, Table
from tasks.tail import File, Json, Output

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


@stage_task(name="load-inputs")
def load_inputs(params: Params) -> tuple[ReportInputs, dict[str, Path]]:
    """Every input the report reads, and their paths by name."""
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


@stage_task(name="report")
def build(inputs: ReportInputs, cfg: ReportConfig) -> Report:
    """The report's tables, claims, curves and markdown (`eapo.report.build_report`)."""
    return build_report(inputs, boot=Boot(cfg.bootstrap, cfg.ci, cfg.seed), reward_threshold=cfg.reward_threshold)


def report_files(params: Params) -> list[Path]:
    final = Path(params.paths.report_dir)
    return [final / f for f in ("report.md", *DATA_FILES, *PNG_FILES)]


def outputs(params: Params, rep: Report) -> dict[Path, Output]:
    """Plots, CSV/JSON data files and report.md (with a lineage sidecar), by final path."""
    cfg, final = params.report, Path(params.paths.report_dir)
    by_variant = list(rep.curves.groupby("variant", sort=False))
    reward = {v: (d["step"].tolist(), d["reward_mean"].tolist()) for v, d in by_variant}
    entropy = {v: (d["step"].tolist(), d["entropy_mean"].tolist()) for v, d in by_variant}
    acc = rep.accuracy
    return {
        final / "reward_curves.png": File(lambda path: plots.curves(reward, "training reward (mean)", path,
                                                                   "Training reward per variant")),
        final / "entropy_curves.png": File(lambda path: plots.curves(entropy, "token entropy (nats)", path,
                                                                    "Policy entropy per variant")),
        final / "accuracy.png": File(lambda path: plots.bars_with_ci(
            [r["variant"] for r in acc], [r["acc"] for r in acc], [r["lo"] for r in acc], [r["hi"] for r in acc],
            "test accuracy (avg@k)", path, f"Test avg@k with {cfg.ci:.0%} bootstrap intervals")),
        final / "quadrant_shares.png": File(lambda path: plots.quadrant_shares(
            {q["quadrant"]: {"share": q["token_share"], "grad_share": q["grad_share"]} for q in rep.quadrants}, path)),
        final / "curves.csv": File(lambda path: write_csv(path, rep.curves)),
        final / "accuracy.csv": File(lambda path: write_csv(
            path, [{k: r[k] for k in ("variant", "acc", "lo", "hi", "greedy")} for r in acc])),
        final / "summary.json": Json(rep.summary),
        final / "report.md": File(lambda path: path.write_text(rep.markdown + "\n"), lineage=True),
    }


def publications(params: Params, rep: Report) -> list[Publication]:
    final = Path(params.paths.report_dir)
    return [
        Markdown("report", rep.markdown, "EAPO study report: Four Quadrant ablation table and more"),
        Table("report-accuracy", rep.accuracy, "Test avg@k per model with bootstrap intervals"),
        Table("report-claims", [{k: c[k] for k in ("id", "statement", "estimate", "lo", "hi", "p_holm", "verdict",
                                                   "mde", "seeds")} for c in rep.claims],
              "The paper's claims: estimate, interval, Holm-adjusted p, verdict, minimum detectable effect"),
        Links("report-plot", [final / f for f in PNG_FILES], "Report plots"),
    ]
