"""Warm stage processes: a server that has imported the heavy libraries once forks the process of each stage.

A stage process imports torch, transformers, Prefect and Great Expectations before its first line of work: ~6 s of
the ~8 s a stage with no work costs here (`benchmarks/bench_startup.py`), and the default run starts 19 of them.

    python -m flows.warm -- dvc repro          # what `make run` does: CMD with a warm server beside it
    python -m flows.warm -- python -m flows.prepare

`python -m flows.warm -- CMD` starts a server (a child process) that imports those libraries and every stage module,
runs CMD with `EAPO_WARM_SOCKET` naming the server's socket, and stops the server when CMD ends; CMD's exit status is
its own. A stage started as `python -m flows.<stage>` under it (DVC's commands are unchanged) hands itself over while
the `flows` package is imported (`hand_off`, called from `flows/__init__.py`): it sends its arguments, working
directory, environment and its stdin/stdout/stderr (the descriptors themselves, over the Unix socket) to the server,
which forks; the child runs `flows.<stage>` as `__main__` as `python -m` would, and the starting process waits and
exits with the child's status, passing on SIGINT/SIGTERM/SIGHUP. Without a server (plain `dvc repro`), or when the
server declines, the stage runs in its own process as before.

What keeps a warm stage the same as a cold one:
- Code: the server drops every project module (eapo, tasks, flows) after warming up, so each stage imports the
  project's code from disk, the code DVC hashed for it. Only third-party libraries stay loaded.
- Environment: libraries read some variables when they are imported (OMP_*, PREFECT_*, HF_*), so the server serves
  only a stage whose environment equals its own, but for the variables that DVC and our pipeline set per stage and
  that are read at run time (`RUN_TIME_ENV`). The interpreter (executable, flags, -W and -X options) must match too.
  A mismatch is declined with one line on stderr, and the stage runs cold.
- Fork safety: the server forks only while it runs no Python thread but its main one (a Python thread could hold a
  lock the child then waits on forever), and it never runs a torch op, so torch's OpenMP pool does not exist yet. The
  native pools that importing numpy and scipy (OpenBLAS) and pyarrow (jemalloc) start register their own fork
  handlers. Random state: CPython reseeds `random` in the child; torch's default generator is untouched, as in a
  fresh process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys

from flows.handoff import MAX_MESSAGE, SERVED_ENV, SOCKET_ENV, STAGES, STARTING_SUFFIX, Declined, interpreter

# Imported lazily inside the stages (so `python -m flows.<stage> --help` stays light): warmed up too.
LAZY_IMPORTS = ("great_expectations", "transformers.models.llama.modeling_llama",
                "transformers.models.auto.modeling_auto", "transformers.models.auto.tokenization_auto",
                "transformers.integrations.ggml", "safetensors.torch", "math_verify", "pyarrow.parquet",
                "prefect.flow_engine", "prefect.task_engine", "fastapi.encoders", "tabulate")
PROJECT_PACKAGES = ("eapo", "tasks", "flows")
# Read at run time, and set per stage by DVC (DVC_ROOT, DVC_STAGE, DVC_EXP_*), the shell DVC starts (PWD, SHLVL, _),
# or the whole-pipeline flow (EAPO_PARENT_RUN): these may differ between the server and a stage it serves.
RUN_TIME_ENV = ("PWD", "OLDPWD", "SHLVL", "_", "EAPO_PARENT_RUN")
RUN_TIME_ENV_PREFIXES = ("DVC_",)


def env_mismatch(server_env: dict[str, str], stage_env: dict[str, str]) -> list[str]:
    """The names of variables that differ between the two environments, but for those read at run time."""
    def relevant(name: str) -> bool:
        return name not in RUN_TIME_ENV and not name.startswith(RUN_TIME_ENV_PREFIXES)

    names = {n for n in server_env.keys() | stage_env.keys() if relevant(n)}
    return sorted(n for n in names if server_env.get(n) != stage_env.get(n))


# --- the server ---------------------------------------------------------------------------------------------------

def warm_up() -> None:
    """Import what the stages import, then drop the project's own modules (each stage imports them from disk)."""
    import importlib

    for stage in STAGES:
        importlib.import_module(f"flows.{stage}")
    for name in LAZY_IMPORTS:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    for name in [n for n in sys.modules if n.split(".")[0] in PROJECT_PACKAGES]:
        del sys.modules[name]
    import gc

    gc.collect()
    gc.freeze()  # long-lived objects: children do not touch their pages for garbage collection (fewer copies)


def _python_threads() -> int:
    import threading

    return threading.active_count()


class _Child(Exception):
    """Raised in a forked child to leave the server's loop: the stage runs at the top of `main`, outside it."""

    def __init__(self, request: dict, conn: socket.socket):
        super().__init__(request["module"])
        self.request, self.conn = request, conn


def serve(path: str, server_env: dict[str, str]) -> None:
    """Listen on `path` until SIGTERM or the parent's exit; fork a child per accepted stage (raises `_Child` there).
    `server_env` is the environment before warming up: what a stage's environment must match."""
    import selectors

    owner = os.getpid()
    parent = os.getppid()
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the wrapper stops us; a terminal's ^C is for the stages
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path + ".tmp")
    listener.listen(16)
    os.replace(path + ".tmp", path)  # the socket appears only once it is listening: its existence means "ready"
    children: dict[int, socket.socket] = {}
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    try:
        while not stop and os.getppid() == parent:
            for _key, _ in sel.select(timeout=0.2):
                conn, _ = listener.accept()
                pid, request = _accept(conn, server_env)
                if pid == 0:  # the child: it keeps its own connection only
                    sel.close()
                    listener.close()
                    for other in children.values():
                        other.close()
                    raise _Child(request, conn)
                if pid > 0:
                    children[pid] = conn
            while children:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                conn = children.pop(pid, None)
                if conn is not None:
                    with contextlib.suppress(OSError), conn:
                        conn.send(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}).encode())
    finally:
        if os.getpid() == owner:
            for pid in children:  # stages still running when we are stopped go with us
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def _accept(conn: socket.socket, server_env: dict[str, str]) -> tuple[int, dict]:
    """Read a request and fork for it: (the child's pid, request) in the server, (0, request) in the child, and
    (-1, {}) when declined."""
    fds: list[int] = []
    try:
        conn.settimeout(10)  # the request follows the connection at once; a client that sends nothing is dropped
        msg, fds, _flags, _addr = socket.recv_fds(conn, MAX_MESSAGE, 3)
        conn.settimeout(None)
        request = json.loads(msg)
        if len(fds) != 3:
            raise Declined(f"expected stdin, stdout and stderr, got {len(fds)} descriptors")
        if request.get("interpreter") != interpreter():
            raise Declined("a different interpreter or interpreter options")
        if differ := env_mismatch(server_env, request.get("env", {})):
            raise Declined(f"environment differs in {', '.join(differ[:5])}")
        if (n := _python_threads()) != 1:
            raise Declined(f"the server runs {n} Python threads; it forks only with one")
    except (OSError, ValueError, Declined) as exc:
        with contextlib.suppress(OSError), conn:
            conn.send(json.dumps({"declined": str(exc)}).encode())
        for fd in fds:
            os.close(fd)
        return -1, {}
    pid = os.fork()
    if pid == 0:
        for i, fd in enumerate(fds):
            os.dup2(fd, i)
            os.close(fd)
        return 0, request
    for fd in fds:
        os.close(fd)
    conn.send(json.dumps({"pid": pid}).encode())
    return pid, request


def run_stage_here(request: dict, conn: socket.socket, import_env: dict[str, str | None]) -> None:
    """In the forked child: become the stage process the request describes, then run its module as `__main__`.
    `import_env` is what importing the libraries did to the environment (None: removed), as it would in a cold
    stage."""
    import importlib
    import runpy
    import threading

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for name, value in import_env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    os.environ.pop(SOCKET_ENV, None)  # this process is the stage: it must not hand itself off again
    os.environ[SERVED_ENV] = str(os.getppid())  # the run record notes that this stage ran warm (eapo/stageio.py)
    sys.path[0] = request["cwd"]  # as `python -m` sets it
    sys.argv = ["-m", *request["args"]]
    sys.orig_argv = [sys.executable, "-m", request["module"], *request["args"]]
    for stream in (sys.stdout, sys.stderr):  # fds 0-2 are the stage's now; buffer as Python would for them
        with contextlib.suppress(AttributeError, ValueError, OSError):
            stream.reconfigure(line_buffering=stream is sys.stderr or os.isatty(stream.fileno()))
    importlib.invalidate_caches()

    def watch():  # the starting process went away (killed): so does the stage, as a child of it would
        with contextlib.suppress(OSError):
            while conn.recv(1):
                pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="warm-stage-watch", daemon=True).start()
    runpy.run_module(request["module"], run_name="__main__", alter_sys=True)


def supported() -> bool:
    """Where a server can run: fork, AF_UNIX SOCK_SEQPACKET (not on macOS) and /proc (the client's liveness check)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SOCK_SEQPACKET") and hasattr(socket, "send_fds")


@contextlib.contextmanager
def server(env: dict[str, str] | None = None, wait: bool = False, ready_timeout: float = 300.0):
    """A warm server for the duration of the block; yields the environment to run stages with (`env`, default ours,
    plus `EAPO_WARM_SOCKET`). It warms up while the block runs (`wait`: before it starts); a stage that arrives
    meanwhile waits for it (flows/handoff.py), so a `dvc repro` with nothing to do does not wait for it at all."""
    import shutil
    import subprocess
    import tempfile
    import time

    if not supported():
        print(f"warm stage processes need Linux (fork, Unix sequenced-packet sockets, /proc); on {sys.platform} "
              "every stage starts in its own process", file=sys.stderr)
        yield dict(os.environ if env is None else env)
        return
    folder = tempfile.mkdtemp(prefix="eapo-warm-")
    path = os.path.join(folder, "server.sock")
    env = {**(os.environ if env is None else env), SOCKET_ENV: path}
    # Its own session: a terminal's ^C goes to CMD and its stages, not to the server. Its stdout and stderr are ours,
    # so libraries that look at the terminal (colours, widths) see the one a cold stage would.
    proc = subprocess.Popen([sys.executable, "-m", "flows.warm", "--serve", path], env=env,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        with open(path + STARTING_SUFFIX, "w") as f:
            f.write(str(proc.pid))
        deadline = time.monotonic() + ready_timeout
        while wait and not os.path.exists(path) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        yield env
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def serving():
    """A warm server for the stages this process starts in the block (e.g. through DVC's Python API): it sets
    `EAPO_WARM_SOCKET` in our environment for the block, and stops the server after it."""
    previous = os.environ.get(SOCKET_ENV)
    with server() as env:
        if SOCKET_ENV in env:
            os.environ[SOCKET_ENV] = env[SOCKET_ENV]
        else:  # no server where none can run (`supported`): the stages start cold
            os.environ.pop(SOCKET_ENV, None)
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop(SOCKET_ENV, None)
            else:
                os.environ[SOCKET_ENV] = previous


def run_with_server(cmd: list[str]) -> int:
    """Run `cmd` with a warm server beside it; its exit status (negative: killed by that signal)."""
    import subprocess

    with server() as env:
        proc = subprocess.Popen(cmd, env=env)
        signal.signal(signal.SIGTERM, lambda signum, _frame: proc.send_signal(signum))  # a scheduler stopping us
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:  # CMD got the terminal's ^C too: let it end its own way
                continue


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m flows.warm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", metavar="SOCKET", help=argparse.SUPPRESS)  # the server itself (internal)
    parser.add_argument("cmd", nargs=argparse.REMAINDER, help="the command to run with a warm server, after --")
    args = parser.parse_args(argv)
    if args.serve:
        before = dict(os.environ)
        try:
            warm_up()
        except BaseException:  # stages waiting for us run cold now
            with contextlib.suppress(OSError):
                os.unlink(args.serve + STARTING_SUFFIX)
            raise
        import_env = {n: os.environ.get(n) for n in before.keys() | os.environ.keys()
                      if before.get(n) != os.environ.get(n)}
        child = None
        try:
            serve(args.serve, before)
        except _Child as forked:  # this is a forked stage process now; run it outside the server's frames
            child = forked
        if child is not None:
            run_stage_here(child.request, child.conn, import_env)
        return 0
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("give the command to run, e.g. `python -m flows.warm -- dvc repro`")
    status = run_with_server(cmd)
    return status if status >= 0 else 128 - status


if __name__ == "__main__":
    sys.exit(main())
