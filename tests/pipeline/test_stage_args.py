"""Stage entry points reject bad arguments and overrides with exit 2 and one line naming the key, before any flow."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT, stage_env


@pytest.fixture
def never_run(monkeypatch):
    """Replace the flows with a recorder: a bad argument must stop before any flow (and Prefect) starts."""
    import flows.evaluate
    import flows.train

    calls = []
    fake = type("FakeFlow", (), {"name": "fake", "description": "",
                                 "__call__": lambda self, **kw: calls.append(kw)})()
    monkeypatch.setattr(flows.train, "train_flow", fake)
    monkeypatch.setattr(flows.evaluate, "evaluate_flow", fake)
    return calls


@pytest.mark.parametrize("module,argv,needle", [
    ("train", ["--variant", "nope"], "--variant: unknown variant 'nope'"),
    ("evaluate", ["--name", "nope"], "--name: unknown model 'nope'"),
    ("train", ["--variant", "grpo", "-S", "train.steps=[1,"], "-S train.steps: cannot read the value"),
    ("train", ["--variant", "grpo", "-S", "train.lr.x=1"], "bad key 'train.lr.x': train.lr is"),
    ("train", ["--variant", "grpo", "-S", "train.lr=.nan"], "train.lr must be a finite number"),
    ("evaluate", ["--name", "base", "-S", "evaluate.num_prompts=-1"], "evaluate.num_prompts must be >= 1"),
    ("train", ["--variant", "grpo", "-S", "variants.grpo.weighting=nope"], "unknown weighting 'nope'"),
])
def test_bad_stage_arguments_exit_2_before_the_flow(never_run, capsys, module, argv, needle):
    import flows.evaluate
    import flows.train

    main = {"train": flows.train.main, "evaluate": flows.evaluate.main}[module]
    with pytest.raises(SystemExit) as exit_:
        main(["--params", str(ROOT / "params.yaml"), *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
    assert never_run == []


def test_good_arguments_reach_the_flow_with_parsed_overrides(never_run):
    import flows.train

    flows.train.main(["--params", str(ROOT / "params.yaml"), "--variant", "eapo", "-S", "train.lr=1e-06"])
    assert never_run == [{"params_path": str(ROOT / "params.yaml"), "overrides": {"train.lr": 1e-06},
                          "variant": "eapo", "seed": 0}]


def test_malformed_override_from_the_command_line_has_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "flows.train", "--variant", "grpo", "-S", "train.steps=[1,"],
                          cwd=ROOT, capture_output=True, text=True, env=stage_env(None), timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "train.steps" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("argv", [["flows.train", "--variant", "grpo", "--seed", "7"],
                                  ["flows.evaluate", "--name", "grpo", "--seed", "7"],
                                  ["flows.evaluate", "--name", "base", "--seed", "0"]])
def test_a_seed_outside_the_study_exits_2_before_the_flow(never_run, argv, capsys):
    """A replicate that study.seeds does not list would train or evaluate a model no report reads."""
    import importlib

    module = importlib.import_module(argv[0])
    with pytest.raises(SystemExit) as exc:
        module.main(["--params", str(ROOT / "params.yaml"), *argv[1:]])
    assert exc.value.code == 2 and never_run == []
    assert "--seed" in capsys.readouterr().err
