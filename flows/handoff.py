"""The stage's side of warm stage processes (flows/warm.py has the server): `hand_off`, called while the `flows`
package is imported, sends a `python -m flows.<stage>` run to the warm server named by `EAPO_WARM_SOCKET`, waits, and
exits with the stage's status. It imports only the standard library, so a handed-off stage costs milliseconds here."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys

SOCKET_ENV = "EAPO_WARM_SOCKET"
# Set in a stage process the server forked: the pid of the server.
SERVED_ENV = "EAPO_WARM_SERVER"
# The stage modules a server warms up and serves: `python -m flows.<stage>` for these only.
STAGES = ("prepare", "rollout", "annotate", "train", "evaluate", "report")
MAX_MESSAGE = 1 << 20
# `<socket>.starting` holds the pid of a server that is still warming up (written by `flows.warm.server`).
STARTING_SUFFIX = ".starting"


class Declined(Exception):
    """The server will not run this stage (its reason is the message); the stage runs in its own process."""


def interpreter() -> dict:
    return {"executable": sys.executable, "flags": repr(sys.flags), "warnoptions": sys.warnoptions,
            "xoptions": repr(sys._xoptions)}


def _stage_of_command_line() -> tuple[str, list[str]] | None:
    """`("flows.prepare", [args])` while `python -m flows.<stage> args` is locating its module, else None."""
    if sys.argv[:1] != ["-m"]:  # python -m sets argv[0] to "-m" until the module is found (Python docs, -m)
        return None
    argv = getattr(sys, "orig_argv", [])
    for i, arg in enumerate(argv[:-1]):
        if arg == "-m":
            module = argv[i + 1]
            stage = module.removeprefix("flows.")
            return (module, argv[i + 2:]) if module.startswith("flows.") and stage in STAGES else None
    return None


def hand_off() -> None:
    """Run this stage in the warm server named by `EAPO_WARM_SOCKET` and exit with its status; return (and run cold)
    where there is no server, this process is not `python -m flows.<stage>`, or the server declines."""
    path = os.environ.get(SOCKET_ENV)
    found = _stage_of_command_line() if path else None
    if found is None:
        return
    module, args = found
    request = {"module": module, "args": args, "cwd": os.getcwd(), "env": dict(os.environ),
               "interpreter": interpreter()}
    sock = None
    try:
        _wait_until_listening(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.connect(path)
    except OSError as exc:
        if sock is not None:
            sock.close()
        print(f"warm stage server at {path} did not answer ({exc}); running {module} in this process",
              file=sys.stderr)
        return
    with sock:
        try:
            socket.send_fds(sock, [json.dumps(request).encode()], [0, 1, 2])
            pid = reply(sock)["pid"]
        except (OSError, Declined, KeyError, ValueError) as exc:
            print(f"warm stage server declined {module} ({exc}); running it in this process", file=sys.stderr)
            return
        status = _wait_forwarding_signals(sock, pid)
    _exit_like(status)


def _wait_until_listening(path: str, timeout: float = 300.0) -> None:
    """Wait while the server is still importing (it binds `path` only once it is warm; `<path>.starting` holds its
    pid until then), so the first stage of a run is not started cold beside a server that is nearly ready."""
    import time

    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        try:
            with open(path + STARTING_SUFFIX) as f:
                pid = int(f.read())
            with open(f"/proc/{pid}/stat") as f:  # gone, or a zombie its parent has not reaped yet: not starting
                if f.read().rpartition(")")[2].split()[0] in ("Z", "X"):
                    raise ProcessLookupError(pid)
        except (OSError, ValueError) as exc:
            raise ConnectionError(f"no server is starting there ({exc.__class__.__name__})") from None
        if time.monotonic() > deadline:
            raise TimeoutError(f"not listening after {timeout:.0f} s")
        time.sleep(0.05)


def reply(sock: socket.socket) -> dict:
    """The server's next message; ``Declined`` when it will not serve the stage."""
    data = sock.recv(MAX_MESSAGE)
    if not data:
        raise ConnectionError("the server closed the connection")
    message = json.loads(data)
    if "declined" in message:
        raise Declined(message["declined"])
    return message


def _wait_forwarding_signals(sock: socket.socket, pid: int) -> int:
    """The stage's exit status (as `subprocess` gives it: negative for a signal); our SIGINT, SIGTERM and SIGHUP go
    on to the stage, which is not in the terminal's process group (the server has its own session)."""
    def forward(signum, _frame):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    try:
        return int(reply(sock)["returncode"])
    except (OSError, KeyError, ValueError, Declined) as exc:
        print(f"warm stage server lost stage process {pid} ({exc})", file=sys.stderr)
        return 1


def _exit_like(status: int) -> None:
    """Exit as the stage did: with its code, or killed by its signal."""
    if status < 0:
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status if status >= 0 else 1)
