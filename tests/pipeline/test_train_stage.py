"""`dvc repro` of one train matrix entry on a project copy, its caching, and per-variant invalidation."""

import subprocess
import sys

import yaml

from eapo.contracts import read_artifact
from eapo.lineage import lineage_tree
from tests.conftest import copy_project, dvc, stage_env, write_tiny_params


def test_dvc_repro_one_variant_caches_and_invalidates_only_it(prefect_api, tmp_path):
    project = copy_project(tmp_path / "proj")
    write_tiny_params(project)
    first = dvc(project, "repro", "train@grpo", api_url=prefect_api)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    steps, lin = read_artifact(project / "data/train/grpo/steps.parquet", "steps")
    assert steps.num_rows == 2 and lin.stage == "train@grpo"
    assert (project / "data/train/grpo/model/config.json").exists()
    assert (project / "data/train/grpo/model/lineage.json").exists()
    assert not (project / "data/train/grpo/.runs").exists()  # checkpoints are removed after a finished run
    # Lineage walks back to the prompts.
    tree = lineage_tree(project / "data/train/grpo/steps.parquet")
    assert tree["inputs"]["prompts_train"]["lineage"]["stage"] == "prepare"

    again = dvc(project, "repro", "train@grpo", api_url=prefect_api)
    assert again.returncode == 0 and "Running stage" not in again.stdout

    # Changing another variant's params leaves this one up to date; changing its own reruns it.
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["variants"]["eapo"]["alpha"] = 0.9
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    status = dvc(project, "status", "train@grpo", "train@eapo", api_url=prefect_api)
    assert "train@grpo" not in status.stdout and "train@eapo" in status.stdout


def test_bad_train_config_fails_before_compute(tmp_path):
    params = write_tiny_params(tmp_path)
    for override, key in (("train.group_size=1", "train.group_size"), ("variants.eapo.alpha=2", "variants.eapo"),
                          ("train.lr=-1", "train.lr"), ("study.variants=[grpo,nope]", "study.variants")):
        proc = subprocess.run([sys.executable, "-m", "flows.train", "--variant", "grpo", "--params", str(params),
                               "-S", override], capture_output=True, text=True, env=stage_env(None), timeout=120)
        assert proc.returncode == 2 and key in proc.stderr, (override, proc.stderr[-500:])
