"""All-or-nothing stage outputs, atomic writes and the per-stage lock (eapo/stageio.py; issue 11, items 4 and 5)."""

import json
import os
import subprocess
import sys

import pytest

from eapo.stageio import StageLocked, StageOutputs, atomic_dir, atomic_file, write_text_atomic
from tests.conftest import ROOT


def _outputs(root):
    return [root / "a.txt", root / "sub" / "b.txt", root / "d"]


def _write_all(out, root, tag, fail_after=None):
    """Write the three outputs into the staging area; raise after `fail_after` of them."""
    for i, final in enumerate(_outputs(root)):
        if fail_after is not None and i == fail_after:
            raise RuntimeError("boom between outputs")
        staged = out.path(final)
        if final.name == "d":
            staged.mkdir()
            (staged / "w.bin").write_text(f"{tag}-w")
        else:
            staged.write_text(f"{tag}-{final.name}")
            staged.with_name(staged.name + ".lineage.json").write_text(f'"{tag}"')


def _state(root):
    """The outputs as a reader sees them (the stage machinery's `.eapo-*` entries aside)."""
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()
            and not p.relative_to(root).parts[0].startswith(".eapo-")}


def test_outputs_are_replaced_together_or_not_at_all(tmp_path):
    with StageOutputs("s", _outputs(tmp_path)) as out:
        _write_all(out, tmp_path, "old")
    old = _state(tmp_path)
    assert old["a.txt"] == "old-a.txt" and old["d/w.bin"] == "old-w" and old["sub/b.txt.lineage.json"] == '"old"'
    for fail_after in (1, 2):  # a failure after the first and after the second output
        with pytest.raises(RuntimeError, match="boom"), StageOutputs("s", _outputs(tmp_path)) as out:
            _write_all(out, tmp_path, "new", fail_after=fail_after)
        assert _state(tmp_path) == old
        assert not [p for p in tmp_path.rglob("*") if "staging" in p.name or p.name.endswith(".tmp")]
    with StageOutputs("s", _outputs(tmp_path)) as out:
        _write_all(out, tmp_path, "new")
    assert _state(tmp_path) == {k: v.replace("old", "new") for k, v in old.items()}
    record = json.loads((tmp_path / ".eapo-run-s.json").read_text())
    assert record["stage"] == "s" and record["started"] and "git_commit" in record
    # What the process cost: this test process has run for a while and holds at least the interpreter in memory.
    cost = record["process"]
    assert cost["seconds"] > 0 and cost["cpu_seconds"] > 0 and 10 < cost["peak_rss_mib"] < 64 * 1024


def test_missing_output_replaces_nothing(tmp_path):
    with StageOutputs("s", _outputs(tmp_path)) as out:
        _write_all(out, tmp_path, "old")
    old = _state(tmp_path)
    with pytest.raises(FileNotFoundError, match="did not write its output"), \
            StageOutputs("s", _outputs(tmp_path)) as out:
        out.path(_outputs(tmp_path)[0]).write_text("new")
    assert _state(tmp_path) == old


def test_a_commit_killed_after_the_manifest_is_finished_by_the_next_run(tmp_path, monkeypatch):
    import eapo.stageio as stageio

    with StageOutputs("s", _outputs(tmp_path)) as out:
        _write_all(out, tmp_path, "old")
    old = _state(tmp_path)
    real, calls = stageio._replace, []

    def dies_on_second(src, dst, aside):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed mid-commit")
        real(src, dst, aside)

    monkeypatch.setattr(stageio, "_replace", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        out = StageOutputs("s", _outputs(tmp_path))
        out._acquire()
        _write_all(out, tmp_path, "new")
        out.commit()
    out._release()
    assert _state(tmp_path)["a.txt"] == "new-a.txt" and _state(tmp_path)["sub/b.txt"] == "old-b.txt"  # mixed now
    monkeypatch.setattr(stageio, "_replace", real)
    with StageOutputs("s", _outputs(tmp_path)) as out:  # the next run rolls the commit forward before anything else
        assert _state(tmp_path) == {k: v.replace("old", "new") for k, v in old.items()}
        _write_all(out, tmp_path, "newer")
    assert _state(tmp_path)["d/w.bin"] == "newer-w"


KILL = """
import os, sys
from pathlib import Path
from eapo.stageio import StageOutputs
root = Path(sys.argv[1])
outs = [root / "a.txt", root / "sub" / "b.txt", root / "d"]
with StageOutputs("s", outs) as out:
    out.path(outs[0]).write_text("new-a.txt")
    os.kill(os.getpid(), 9)  # SIGKILL between two outputs: no cleanup code runs
"""


def test_sigkill_between_outputs_leaves_the_old_ones_and_no_temp_files_after_the_next_run(tmp_path):
    with StageOutputs("s", _outputs(tmp_path)) as out:
        _write_all(out, tmp_path, "old")
    old = _state(tmp_path)
    proc = subprocess.run([sys.executable, "-c", KILL, str(tmp_path)], cwd=ROOT, capture_output=True, timeout=60)
    assert proc.returncode == -9
    assert _state(tmp_path) == old
    assert (tmp_path / ".eapo-staging-s").exists()  # what the killed run left ...
    with StageOutputs("s", _outputs(tmp_path)) as out:
        assert not (tmp_path / ".eapo-staging-s" / "new" / "a.txt").exists()  # ... the next run removes first
        _write_all(out, tmp_path, "new")
    assert _state(tmp_path)["a.txt"] == "new-a.txt"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [".eapo-lock-s", ".eapo-run-s.json"]


HOLD = """
import sys, time
from pathlib import Path
from eapo.stageio import StageOutputs
with StageOutputs("train@grpo", [Path(sys.argv[1]) / "model"]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_run_of_a_stage_fails_at_once_naming_the_holder(tmp_path):
    import socket
    import time

    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.perf_counter()
        with pytest.raises(StageLocked) as err, StageOutputs("train@grpo", [tmp_path / "model"]):
            pass
        assert time.perf_counter() - t0 < 2
        msg = str(err.value)
        assert f"pid {holder.pid}" in msg and socket.gethostname() in msg and "started 20" in msg
        assert "train@grpo" in msg
        # Another stage (another variant) in the same folder is not blocked.
        with StageOutputs("train@eapo", [tmp_path / "model2"]) as out:
            out.path(tmp_path / "model2").mkdir()
    finally:
        holder.kill()
        holder.wait()
    with StageOutputs("train@grpo", [tmp_path / "model"]) as out:  # the lock dies with its holder
        out.path(tmp_path / "model").mkdir()


def test_atomic_helpers_leave_nothing_on_failure(tmp_path):
    target = tmp_path / "f.txt"
    write_text_atomic(target, "one")
    with pytest.raises(ValueError), atomic_file(target) as tmp:
        tmp.write_text("half")
        raise ValueError
    assert target.read_text() == "one" and os.listdir(tmp_path) == ["f.txt"]
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "x").write_text("1")
    with pytest.raises(ValueError), atomic_dir(tmp_path / "d") as tmp:
        (tmp / "x").write_text("2")
        raise ValueError
    assert (tmp_path / "d" / "x").read_text() == "1" and sorted(os.listdir(tmp_path)) == ["d", "f.txt"]
    with atomic_dir(tmp_path / "d", first_wins=True) as tmp:  # an existing complete directory is kept
        (tmp / "x").write_text("3")
    assert (tmp_path / "d" / "x").read_text() == "1" and sorted(os.listdir(tmp_path)) == ["d", "f.txt"]
