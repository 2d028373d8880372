"""`dvc repro` of one train matrix entry on a project copy, its caching, and per-variant invalidation."""

import subprocess
import sys

import pytest
import yaml

from eapo.config import load_params
from eapo.contracts import read_artifact, write_artifact
from eapo.data import step_prompt_indices
from eapo.lineage import lineage_tree, make_lineage
from tasks.rollout import first_prompts, rollout_prompts
from tests.conftest import ROOT, copy_project, dvc, stage_env, write_tiny_params
from tests.pipeline.test_contracts import prompts_frame


@pytest.mark.minutes(1.5)
def test_dvc_repro_one_variant_caches_and_invalidates_only_it(prefect_api, tmp_path):
    project = copy_project(tmp_path / "proj")
    write_tiny_params(project)
    first = dvc(project, "repro", "train@grpo-0", api_url=prefect_api)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    run = project / "data/train/grpo/seed0"
    steps, lin = read_artifact(run / "steps.parquet", "steps")
    assert steps.num_rows == 2 and lin.stage == "train@grpo-0"
    assert lin.seed == 0 and lin.extra["study_seed"] == 0 and lin.params["study.seed"] == 0
    assert (run / "model/config.json").exists()
    assert (run / "model/lineage.json").exists()
    assert not (run / ".runs").exists()  # checkpoints are removed after a finished run
    # Lineage walks back to the prompts.
    tree = lineage_tree(run / "steps.parquet")
    assert tree["inputs"]["prompts_train"]["lineage"]["stage"] == "prepare"
    # Step 0 trained on the rollout stage's samples of its prompts (`train.reuse_rollouts`), and says so.
    assert tree["inputs"]["rollouts"]["lineage"]["stage"] == "rollout"

    again = dvc(project, "repro", "train@grpo-0", api_url=prefect_api)
    assert again.returncode == 0 and "Running stage" not in again.stdout

    # Changing another variant's params leaves this one up to date; changing its own reruns it.
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["variants"]["eapo"]["alpha"] = 0.9
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    status = dvc(project, "status", "train@grpo-0", "train@eapo-0", api_url=prefect_api)
    assert "train@grpo-0" not in status.stdout and "train@eapo-0" in status.stdout

    # Adding a seed adds (variant, seed) stages and leaves the existing ones up to date.
    raw["variants"]["eapo"]["alpha"] = 0.5
    raw["study"]["seeds"] = [0, 1]
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    status = dvc(project, "status", "train@grpo-0", "train@grpo-1", api_url=prefect_api)
    assert status.returncode == 0 and "train@grpo-0" not in status.stdout and "train@grpo-1" in status.stdout
    raw["study"]["seeds"] = [0]
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))

    # `dvc exp run -S study.seeds=[0,1]` trains the new replicate with trainer seed train.seed + 1, in its own dir.
    exp = dvc(project, "exp", "run", "-S", "study.seeds=[0,1]", "train@grpo-1", api_url=prefect_api)
    assert exp.returncode == 0, exp.stdout[-3000:] + exp.stderr[-3000:]
    assert "train@grpo-0" not in exp.stdout.replace("'train@grpo-0' didn't change", "")
    steps1, lin1 = read_artifact(project / "data/train/grpo/seed1/steps.parquet", "steps")
    assert lin1.stage == "train@grpo-1" and lin1.seed == 1 and lin1.extra["study_seed"] == 1
    assert steps1.column("entropy_mean").to_pylist() != steps.column("entropy_mean").to_pylist()  # other samples

    # The report over the 2-seed study (in process: annotate, three evaluations, report).
    _two_seed_report(project, prefect_api)


def _two_seed_report(project, prefect_api):
    import json
    import os

    from flows.annotate import annotate_flow
    from flows.evaluate import evaluate_flow
    from flows.report import report_flow

    params = str(project / "params.yaml")
    sets = {"study.variants": ["grpo"], "study.seeds": [0, 1]}
    cwd = os.getcwd()
    os.chdir(project)
    try:
        annotate_flow(params_path=params, overrides=sets)
        evaluate_flow(params_path=params, overrides=sets, name="base")
        for seed in (0, 1):
            evaluate_flow(params_path=params, overrides=sets, name="grpo", seed=seed)
        report_flow(params_path=params, overrides=sets)
    finally:
        os.chdir(cwd)
    md = (project / "data/report/report.md").read_text()
    summary = json.loads((project / "data/report/summary.json").read_text())
    assert (project / "data/metrics/grpo/seed1.json").is_file()
    per_seed = md.split("## Per-seed")[1].split("##")[0]
    assert "| model | seed 0 | seed 1 | mean | sd over seeds |" in per_seed and "| grpo |" in per_seed
    assert "over 2 training seeds" in md and "hierarchical paired bootstrap" in md
    assert "## Claims" in md and "## Sharpening or new capability?" in md
    assert summary["seeds"] == 2 and summary["grpo"]["seeds"] == 2
    claims = {c["id"]: c for c in summary["claims"]}
    assert set(claims) == {"C1", "C2", "C3", "C4", "C5a", "C5b"}
    assert claims["C1"]["verdict"] == "not run" and claims["C3"]["seeds"] == 2
    for c in summary["claims"]:
        assert set(c) == {"id", "statement", "estimate", "lo", "hi", "p_holm", "verdict", "mde", "seeds"}


def test_bad_train_config_fails_before_compute(tmp_path):
    params = write_tiny_params(tmp_path)
    for override, key in (("train.group_size=1", "train.group_size"), ("variants.eapo.alpha=2", "variants.eapo"),
                          ("train.lr=-1", "train.lr"), ("study.variants=[grpo,nope]", "study.variants")):
        proc = subprocess.run([sys.executable, "-m", "flows.train", "--variant", "grpo", "--params", str(params),
                               "-S", override], capture_output=True, text=True, env=stage_env(None), timeout=120)
        assert proc.returncode == 2 and key in proc.stderr, (override, proc.stderr[-500:])


@pytest.mark.parametrize("n", [20, 150, 1000])
def test_the_rollout_stage_rolls_out_the_prompts_of_train_step_0(tmp_path, n):
    """`train.reuse_rollouts` (default true): step 0 samples from the unchanged base policy, so it takes the rollout
    stage's samples of its prompts instead of sampling them again in every train stage. With params.yaml's values it
    never did: the rollout stage took the first `rollout.num_prompts` prompts by id, while step 0 draws its prompts
    from a seeded permutation. The rollout stage now takes the first prompts of that same permutation."""
    params = load_params(ROOT / "params.yaml")
    path = tmp_path / "prompts_train.parquet"
    write_artifact(prompts_frame(n), path, "prompts", make_lineage("prepare", {}, seed=0))
    rolled = [p["id"] for p in rollout_prompts(str(path), params.rollout.num_prompts, params.rollout.seed)]
    everything = first_prompts(str(path), None)
    step0 = [everything[i]["id"] for i in step_prompt_indices(n, params.train.prompts_per_step, params.train.seed, 0)]
    assert len(set(rolled)) == len(rolled) == min(n, params.rollout.num_prompts)
    assert set(step0) <= set(rolled)
    assert rollout_prompts(str(path), None, 0) == everything  # null: every prompt, in id order
