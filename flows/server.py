"""Start (or find) one local Prefect server for a whole `dvc repro`.

Every DVC stage is its own process. With Prefect's ephemeral API each would start a throwaway server (10-25 s here), and
its runs would vanish with it. One `prefect server start` on 127.0.0.1 serves them all and gives the user the UI.

    python -m flows.server ensure   # prints the API URL, starting a server in the background if none answers
    python -m flows.server stop     # stops the server this command started (by its PID file)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import eapo  # noqa: F401  (telemetry off before Prefect is touched)

HOST = os.environ.get("EAPO_PREFECT_HOST", "127.0.0.1")
PORT = int(os.environ.get("EAPO_PREFECT_PORT", "4200"))
STATE_DIR = Path(os.environ.get("EAPO_PREFECT_STATE", ".prefect"))


def api_url(host: str = HOST, port: int = PORT) -> str:
    return f"http://{host}:{port}/api"


def healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as resp:
            return resp.status == 200
    except OSError:
        return False


def start(host: str = HOST, port: int = PORT, wait_s: float = 120.0, state_dir: Path = STATE_DIR) -> tuple[str, int]:
    """Start `prefect server start` detached; return (api_url, pid) once /health answers."""
    url = api_url(host, port)
    state_dir.mkdir(parents=True, exist_ok=True)
    log = open(state_dir / f"server-{port}.log", "ab")
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
           "PREFECT_UI_ENABLED": os.environ.get("PREFECT_UI_ENABLED", "true")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    (state_dir / f"server-{port}.pid").write_text(str(proc.pid))
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with code {proc.returncode}; see {log.name}")
        if healthy(url):
            return url, proc.pid
        time.sleep(0.5)
    stop_pid(proc.pid)
    raise RuntimeError(f"prefect server did not answer on {url} within {wait_s:.0f} s; see {log.name}")


def stop_pid(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def ensure() -> str:
    """The API URL of a running server: `PREFECT_API_URL` if it answers, else ours on HOST:PORT (started if needed)."""
    configured = os.environ.get("PREFECT_API_URL")
    if configured and healthy(configured):
        return configured
    url = api_url()
    if healthy(url):
        return url
    url, _ = start()
    return url


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else "ensure"
    if cmd == "ensure":
        print(ensure())
        return 0
    if cmd == "stop":
        pid_file = STATE_DIR / f"server-{PORT}.pid"
        if pid_file.exists():
            stop_pid(int(pid_file.read_text()))
            pid_file.unlink()
            print(f"stopped the Prefect server on port {PORT}")
        else:
            print(f"no Prefect server started by this project on port {PORT}")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
