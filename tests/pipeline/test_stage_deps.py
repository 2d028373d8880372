"""Each dvc.yaml stage lists, as deps, every project module its command imports (issue 11, item 1): a stage whose code
changed must not be reported up to date."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from eapo.codedeps import code_hash, import_closure
from tests.conftest import ROOT

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def missing_deps(stage: dict, root=ROOT) -> tuple[str, list[str]]:
    """(the flow module, the files of its import closure no dep covers)."""
    m = re.match(r"python -m (flows\.\w+)", stage["cmd"])
    assert m, stage["cmd"]
    entry = m.group(1).replace(".", "/") + ".py"
    deps = [d for d in stage.get("deps", []) if "${" not in d]
    uncovered = [str(f) for f in import_closure(entry, root)
                 if not any(str(f) == d or str(f).startswith(d.rstrip("/") + "/") for d in deps)]
    return entry, uncovered


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_cover_the_code_it_imports(name):
    entry, uncovered = missing_deps(STAGES[name])
    assert not uncovered, f"dvc.yaml stage {name!r} ({entry}) imports but does not list as deps: {uncovered}"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_code_deps_are_only_the_code_it_imports(name):
    """Over-listed code deps rerun a stage for edits it cannot see (the report rerunning after a sampler change)."""
    m = re.match(r"python -m (flows\.\w+)", STAGES[name]["cmd"])
    closure = [str(f) for f in import_closure(m.group(1).replace(".", "/") + ".py", ROOT)]
    code = [d for d in STAGES[name].get("deps", []) if "${" not in d]
    extra = [d for d in code if not any(f == d or f.startswith(d.rstrip("/") + "/") for f in closure)]
    assert not extra, f"dvc.yaml stage {name!r} lists code deps it does not import: {extra}"


def test_closure_follows_imports_inside_functions_and_packages(tmp_path):
    """The checker itself: a lazy import inside a function and a package's __init__ count; other packages do not."""
    for rel, text in {
        "flows/__init__.py": "",
        "flows/x.py": "import os\nfrom eapo.sub import thing\n\ndef f():\n    from eapo import lazy\n",
        "eapo/__init__.py": "",
        "eapo/sub/__init__.py": "from eapo.sub.deep import thing\n",
        "eapo/sub/deep.py": "thing = 1\n",
        "eapo/lazy.py": "from . import leaf\n",
        "eapo/leaf.py": "",
        "eapo/unused.py": "",
    }.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    got = {str(p) for p in import_closure("flows/x.py", tmp_path)}
    assert got == {"flows/__init__.py", "flows/x.py", "eapo/__init__.py", "eapo/sub/__init__.py", "eapo/sub/deep.py",
                   "eapo/lazy.py", "eapo/leaf.py"}
    stage = {"cmd": "python -m flows.x", "deps": ["flows/x.py", "eapo/sub"]}
    assert missing_deps(stage, tmp_path)[1] == ["eapo/__init__.py", "eapo/lazy.py", "eapo/leaf.py", "flows/__init__.py"]


def test_code_hash_ignores_comments_but_not_code(tmp_path):
    for rel, text in {"flows/__init__.py": "", "flows/s.py": "import eapo.m\n", "eapo/__init__.py": "",
                      "eapo/m.py": "x = 1\n"}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    first = code_hash("s", tmp_path)
    (tmp_path / "eapo/m.py").write_text("# a comment\nx = 1  # another\n")
    assert code_hash("s", tmp_path) == first
    (tmp_path / "eapo/m.py").write_text("x = 2\n")
    assert code_hash("s", tmp_path)["sha256"] != first["sha256"]


# The params a stage records in its lineage are the params dvc.yaml invalidates it on: dvc.yaml owns the list, and the
# tasks' copies (PARAMS_KEYS, tasks.train.params_keys) are held equal to it here, so neither can drift alone.
def _task_params(name: str) -> list[str]:
    import importlib

    if name == "train":
        from tasks.train import params_keys

        return list(params_keys("${item.variant}"))
    module = importlib.import_module(f"tasks.{'evaluate' if name.startswith('evaluate') else name}")
    return list(module.PARAMS_KEYS)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_lineage_params_are_the_params_dvc_yaml_lists(name):
    assert _task_params(name) == STAGES[name]["params"], (
        f"dvc.yaml stage {name!r} lists params {STAGES[name]['params']} but its task records {_task_params(name)}")


def _directory_deps() -> list[str]:
    return sorted({d.rstrip("/") for s in STAGES.values() for d in s.get("deps", [])
                   if "${" not in d and (ROOT / d).is_dir()})


def test_python_bytecode_is_not_part_of_any_directory_dep():
    """Python writes ``__pycache__/*.pyc`` next to the modules it imports (unless PYTHONDONTWRITEBYTECODE is set), so
    the first stage of a ``dvc repro`` on a normal machine added files to ``eapo/core``: every stage that lists it was
    then reported changed, and a clone's committed ``dvc.lock`` never matched. ``.dvcignore`` keeps bytecode out of
    the hashes; checked with DVC itself (``dvc check-ignore``)."""
    dvc = str(Path(sys.executable).parent / "dvc")
    dirs = _directory_deps()
    assert "eapo/core" in dirs, dirs
    paths = [f"{d}/__pycache__/module.cpython-311.pyc" for d in dirs] + [f"{d}/stray.pyc" for d in dirs]
    proc = subprocess.run([dvc, "check-ignore", *paths], cwd=ROOT, capture_output=True, text=True)
    # exit 1 means "nothing ignored"; other codes are DVC itself failing (a full disk, once), which stderr says
    assert proc.returncode in (0, 1), f"dvc check-ignore failed ({proc.returncode}): {proc.stderr}"
    ignored = set(proc.stdout.split())
    assert ignored == set(paths), f"bytecode DVC would hash as a dep: {sorted(set(paths) - ignored)}"
    # and real sources stay hashed
    kept = subprocess.run([dvc, "check-ignore", "eapo/core/entropy.py"], cwd=ROOT, capture_output=True, text=True)
    assert kept.returncode == 1 and not kept.stdout.strip(), kept.stdout
