"""What `make install` leaves behind that the stages' speed depends on."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

HEAVY = ("great_expectations", "prefect", "torch", "transformers", "math_verify", "pandas")


@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="not running from the project's virtual environment")
@pytest.mark.parametrize("name", HEAVY)
def test_installed_libraries_carry_their_bytecode(name):
    """Every stage is a fresh process. Without .pyc files (uv does not write them unless told, and
    PYTHONDONTWRITEBYTECODE stops Python from writing them at import) each stage compiled these libraries from source
    again: 7-10 s of a 12-22 s stage start-up here. The Makefile installs with ``--compile-bytecode``."""
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin, name
    pyc = Path(importlib.util.cache_from_source(spec.origin))
    assert pyc.is_file(), f"{name}: no bytecode at {pyc} (installed without --compile-bytecode?)"
    # usable as the import system checks it: the header records the source's mtime and size (PEP 552, unchecked)
    header = pyc.read_bytes()[:16]
    assert header[:4] == importlib.util.MAGIC_NUMBER, f"{pyc}: written by another Python"
    st = os.stat(spec.origin)
    if int.from_bytes(header[4:8], "little") == 0:
        assert int.from_bytes(header[8:12], "little") == int(st.st_mtime) & 0xFFFFFFFF, f"{pyc} is stale"
        assert int.from_bytes(header[12:16], "little") == st.st_size & 0xFFFFFFFF, f"{pyc} is stale"


def _run_recipe(*args: str) -> str:
    """The shell command `make run` would run (``make -n``: printed, not run)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(["make", "-n", "-s", "-C", str(root), "run", *args], capture_output=True, text=True,
                         env={**os.environ, "MAKEFLAGS": ""}, check=True, timeout=60)
    return out.stdout


@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="not running from the project's virtual environment")
def test_make_run_preloads_the_malloc_it_is_given_and_only_that():
    """`make run` runs the stages with tcmalloc where the system has one (Makefile MALLOC), a path the user can change
    or empty; a user's own LD_PRELOAD is kept after it."""
    assert 'LD_PRELOAD="/opt/x/libfoo.so${LD_PRELOAD:+:$LD_PRELOAD}" ' in _run_recipe("MALLOC=/opt/x/libfoo.so")
    assert 'LD_PRELOAD="${LD_PRELOAD:+:$LD_PRELOAD}" ' in _run_recipe("MALLOC=")
    default = _run_recipe().split('LD_PRELOAD="', 1)[1].split("${", 1)[0]
    assert default == "" or (Path(default).is_file() and "tcmalloc" in Path(default).name), default


def test_make_run_runs_dvc_under_a_warm_stage_server_unless_told_not_to():
    """`make run` starts `dvc repro` under `python -m flows.warm --` (Makefile WARM), and `make run WARM=` without."""
    assert "-m flows.warm -- .venv/bin/dvc repro" in _run_recipe()
    cold = _run_recipe("WARM=")
    assert "flows.warm" not in cold and cold.rstrip().endswith('"  .venv/bin/dvc repro')
