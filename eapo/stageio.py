"""Atomic writes, all-or-nothing stage outputs and one lock per stage.

- `atomic_file(path)` / `write_text_atomic(path, text)`: one file, written to a hidden temp file next to it and renamed
  into place. `atomic_dir(final)`: the same for a directory (replace it, or keep the first one with `first_wins`).
- `StageOutputs(stage, outputs)`: a stage writes every output into one staging directory (`out.path(final)`) and the
  outputs are committed together at the end: a manifest is written last into the staging directory, then each staged
  output is renamed over its final path. A failure before the manifest drops the staging directory and leaves the old
  outputs untouched; a kill during the renames is finished (rolled forward from the manifest) by the next run of the
  stage, which also removes any leftovers of killed writes. So a reader sees the complete old outputs or the complete
  new ones.
- The same object holds a `filelock` lock for the stage while it runs, so a second run of the same stage fails at once
  with `StageLocked`, naming the holder (pid, host, start time).

Staging directories, locks and the run record live next to the outputs under names starting with `.eapo-`
(`.dvcignore` keeps them out of DVC's directory hashes). The run record `.eapo-run-<stage>.json` holds what must not
be in a DVC-tracked file: the creation time, the git commit, the wall time, and what the stage process cost (seconds
since the process started, its start-up included; CPU seconds; peak RSS of the process and of its largest child):
`benchmarks/stage_costs.py` tabulates them for a whole run.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["StageLocked", "StageOutputs", "atomic_dir", "atomic_file", "git_info", "write_text_atomic"]

PREFIX = ".eapo-"
MANIFEST = "MANIFEST.json"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temp path next to `path`; on success it is renamed onto `path` (mode as for a plain new file), on
    failure removed. A killed writer leaves no half-written `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def atomic_dir(final: str | Path, *, first_wins: bool = False) -> Iterator[Path]:
    """Yield a temp directory next to `final`; on success it becomes `final` by a rename, on failure it is removed.

    An existing `final` is replaced (moved aside, then deleted), or with `first_wins` kept: when two writers race,
    the first rename wins and the other's directory is dropped (both built the same thing)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        if first_wins:
            with contextlib.suppress(OSError):
                os.rename(tmp, final)
            if not final.exists():
                raise OSError(f"{final}: could not rename {tmp} into place")
        else:
            _replace(tmp, final, final.parent / f".{final.name}.old-{os.getpid()}")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _replace(src: Path, dst: Path, aside: Path) -> None:
    """Rename `src` onto `dst`, a file or a directory; an existing directory `dst` is moved to `aside` first."""
    if dst.is_dir() and not dst.is_symlink():
        _remove(aside)
        aside.parent.mkdir(parents=True, exist_ok=True)
        os.rename(dst, aside)
        os.rename(src, dst)
        _remove(aside)
    else:
        os.replace(src, dst)


def git_info(root: str | Path = ".") -> dict[str, Any]:
    """The checkout's commit and whether tracked code differs from it (for the run record, not for artifacts)."""
    def run(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = run("rev-parse", "HEAD")
    status = run("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)dvc.lock")
    return {"git_commit": commit, "git_dirty": bool(status) if status is not None else None}


def process_cost() -> dict[str, float]:
    """What this process has cost so far: seconds since it started (interpreter start-up and imports included), CPU
    seconds (user + system, its threads together), and peak RSS in MiB of itself and of its largest waited-for child
    (e.g. a reward worker). Linux reports ``ru_maxrss`` in KiB. ``warm`` says whether a warm stage server
    (flows/warm.py) forked this process with its libraries already imported: then the seconds start at the fork."""
    import resource

    import psutil

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"seconds": round(time.time() - psutil.Process().create_time(), 2),
            "cpu_seconds": round(me.ru_utime + me.ru_stime, 2),
            "peak_rss_mib": round(me.ru_maxrss / 1024, 1), "children_peak_rss_mib": round(kids.ru_maxrss / 1024, 1),
            "warm": "EAPO_WARM_SERVER" in os.environ}


class StageLocked(RuntimeError):
    """Another run of the same stage holds its lock."""


def _safe(stage: str) -> str:
    return "".join(c if c.isalnum() or c in "-_@." else "_" for c in stage)


class StageOutputs:
    """All-or-nothing outputs of one stage run, under the stage's lock. Use as a context manager::

        with StageOutputs("prepare", [train_path, test_path, summary_path]) as out:
            write_artifact(rows, out.path(train_path), ...)     # every output (and its sidecar) goes to out.path()
            ...
        # here all outputs are in place, or (on an exception) none was touched

    The outputs' nearest common folder holds the lock, the staging directory and the run record."""

    def __init__(self, stage: str, outputs: Sequence[str | Path]):
        if not outputs:
            raise ValueError("StageOutputs needs at least one output")
        self.stage = stage
        self.outputs = [Path(os.path.abspath(p)) for p in outputs]
        self.root = Path(os.path.commonpath([p.parent for p in self.outputs]))
        name = _safe(stage)
        self.staging = self.root / f"{PREFIX}staging-{name}"
        self.lock_path = self.root / f"{PREFIX}lock-{name}"
        self.holder_path = self.root / f"{PREFIX}lock-{name}.holder.json"
        self.record_path = self.root / f"{PREFIX}run-{name}.json"
        self.run_info: dict[str, Any] = {}
        """Facts about this run that must not be in a tracked artifact (wall time, resumption): the run record."""
        self.cleanup: list[Path] = []
        """Paths removed after a successful commit, still under the lock (e.g. resume checkpoints)."""
        self._lock = None
        self._started: str = ""

    # -- paths ---------------------------------------------------------------------------------------------------
    def _rel(self, final: str | Path) -> Path:
        p = Path(os.path.abspath(final))
        if p not in self.outputs:
            raise ValueError(f"{final}: not a declared output of stage {self.stage!r}: "
                             f"{[str(o) for o in self.outputs]}")
        return p.relative_to(self.root)

    def path(self, final: str | Path) -> Path:
        """Where to write output `final` during the run (its parent folder exists)."""
        staged = self.staging / "new" / self._rel(final)
        staged.parent.mkdir(parents=True, exist_ok=True)
        return staged

    # -- lock ----------------------------------------------------------------------------------------------------
    def _acquire(self) -> None:
        from filelock import FileLock, Timeout

        self.root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.lock_path), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise StageLocked(f"stage {self.stage!r} is already running: {self._holder()} holds {self.lock_path}; "
                              "wait for it to finish or stop it") from None
        self._lock = lock
        self._started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": self._started, "stage": self.stage}
        write_text_atomic(self.holder_path, json.dumps(holder))

    def _holder(self) -> str:
        try:
            h = json.loads(self.holder_path.read_text())
            return f"pid {h['pid']} on host {h['host']} (started {h['started']})"
        except (OSError, ValueError, KeyError):
            return "another process"

    def _release(self) -> None:
        if self._lock is not None:
            self.holder_path.unlink(missing_ok=True)
            self._lock.release()
            self._lock = None

    # -- commit and recovery -------------------------------------------------------------------------------------
    def _entries(self) -> list[str]:
        """What is moved into place: each output and its lineage sidecar (when written), as paths under the root."""
        new = self.staging / "new"
        entries = []
        for final in self.outputs:
            rel = self._rel(final)
            if not (new / rel).exists():
                raise FileNotFoundError(f"stage {self.stage!r} did not write its output {final}; nothing was replaced")
            entries.append(str(rel))
            side = rel.with_name(rel.name + ".lineage.json")
            if (new / side).exists():
                entries.append(str(side))
        return entries

    def _apply(self, entries: list[str]) -> None:
        new, old = self.staging / "new", self.staging / "old"
        for rel in entries:
            if (new / rel).exists() or (new / rel).is_symlink():
                (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
                _replace(new / rel, self.root / rel, old / rel)
        shutil.rmtree(self.staging, ignore_errors=True)

    def commit(self) -> None:
        entries = self._entries()
        # The manifest is the commit point: from here on the new outputs win, even across a kill.
        write_text_atomic(self.staging / MANIFEST, json.dumps({"stage": self.stage, "entries": entries}))
        self._apply(entries)

    def recover(self) -> None:
        """Finish a commit a kill interrupted (manifest present), or drop the leftovers of a killed run."""
        manifest = self.staging / MANIFEST
        if manifest.is_file():
            self._apply(json.loads(manifest.read_text())["entries"])
        elif self.staging.exists():
            shutil.rmtree(self.staging, ignore_errors=True)

    def _write_record(self) -> None:
        ended = _dt.datetime.now(_dt.timezone.utc)
        record = {"stage": self.stage, "started": self._started,
                  "finished": ended.isoformat(timespec="seconds"), "host": socket.gethostname(), "pid": os.getpid(),
                  **git_info(Path.cwd()), "outputs": [str(p) for p in self.outputs], "process": process_cost(),
                  **self.run_info}
        write_text_atomic(self.record_path, json.dumps(record, indent=1, default=str) + "\n")

    def __enter__(self) -> StageOutputs:
        self._acquire()
        try:
            self.recover()
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                try:
                    self.commit()
                except BaseException:
                    if not (self.staging / MANIFEST).is_file():  # not committed: nothing was replaced
                        shutil.rmtree(self.staging, ignore_errors=True)
                    raise
                self._write_record()
                for p in self.cleanup:
                    _remove(p)
            else:
                shutil.rmtree(self.staging, ignore_errors=True)
        finally:
            self._release()
