"""dvc.yaml and eapo.layout spell the per-(variant, seed) file layout twice: this test holds them equal."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from eapo.config import load_params
from eapo.layout import metrics_path, samples_path, train_paths

ROOT = Path(__file__).resolve().parents[2]


def _render(template: str, params, item: dict) -> Path:
    def sub(m: re.Match) -> str:
        scope, key = m.group(1).split(".", 1)
        return str(item[key] if scope == "item" else getattr(params.paths, key))
    return Path(re.sub(r"\$\{([^}]+)\}", sub, template))


def _outs(stage: dict) -> list[str]:
    return [next(iter(o)) if isinstance(o, dict) else o for o in stage.get("outs", []) + stage.get("metrics", [])]


def test_dvc_yaml_outputs_are_the_layouts_paths():
    params = load_params(ROOT / "params.yaml")
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    item = {"variant": "eapo", "seed": 3}
    train = {_render(t, params, item) for t in _outs(stages["train"])}
    assert train == {train_paths(params, "eapo", 3)["model"], train_paths(params, "eapo", 3)["steps"]}
    evaluate = {_render(t, params, item) for t in _outs(stages["evaluate"])}
    assert evaluate == {samples_path(params, "eapo", 3), metrics_path(params, "eapo", 3)}
    base = {_render(t, params, {}) for t in _outs(stages["evaluate_base"])}
    assert base == {samples_path(params, "base"), metrics_path(params, "base")}
    curves = {_render(next(iter(p)), params, item) for p in stages["train"]["plots"]}
    assert curves == {train_paths(params, "eapo", 3)["curves"]}
