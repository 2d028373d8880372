"""flows/warm.py and flows/handoff.py: stages forked from a warm server write what a fresh process writes, run the
project's code as it is on disk, exit with the stage's status, and run cold when the server must not serve them."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from eapo.contracts import read_artifact
from flows import handoff, warm
from tests.conftest import copy_project, stage_env, write_tiny_params

PY = sys.executable


def test_env_mismatch_ignores_only_what_dvc_and_the_shell_set_per_stage():
    server = {"PATH": "/a", "OMP_WAIT_POLICY": "PASSIVE", "PWD": "/x", "DVC_STAGE": "train@grpo-0"}
    stage = {"PATH": "/a", "OMP_WAIT_POLICY": "PASSIVE", "PWD": "/y", "DVC_STAGE": "prepare", "DVC_ROOT": "/y",
             "SHLVL": "2", "_": "/usr/bin/python", "EAPO_PARENT_RUN": "abc"}
    assert warm.env_mismatch(server, stage) == []
    assert warm.env_mismatch(server, {**stage, "OMP_WAIT_POLICY": "ACTIVE"}) == ["OMP_WAIT_POLICY"]
    assert warm.env_mismatch(server, {**stage, "HF_HUB_OFFLINE": "1"}) == ["HF_HUB_OFFLINE"]  # added
    without_path = {k: v for k, v in stage.items() if k != "PATH"}
    assert warm.env_mismatch(server, without_path) == ["PATH"]  # removed


@pytest.mark.parametrize("argv0, orig, expected", [
    ("-m", [PY, "-m", "flows.prepare", "--params", "p.yaml"], ("flows.prepare", ["--params", "p.yaml"])),
    ("-m", [PY, "-X", "utf8", "-m", "flows.train", "--variant", "grpo"], ("flows.train", ["--variant", "grpo"])),
    ("-m", [PY, "-m", "flows.pipeline"], None),  # not a stage: the pipeline flow drives DVC itself
    ("-m", [PY, "-m", "flows.warm", "--", "dvc", "repro"], None),
    ("script.py", [PY, "script.py"], None),  # `import flows` from a script or a test
])
def test_only_python_m_of_a_stage_module_is_handed_off(monkeypatch, argv0, orig, expected):
    monkeypatch.setattr(sys, "argv", [argv0])
    monkeypatch.setattr(sys, "orig_argv", orig)
    assert handoff._stage_of_command_line() == expected


def test_where_no_server_can_run_stages_run_cold_and_say_so_once(monkeypatch, capsys):
    """macOS has no AF_UNIX SOCK_SEQPACKET: no server is started there, and a stage that still finds
    EAPO_WARM_SOCKET (set by hand) runs in its own process instead of failing."""
    monkeypatch.setattr(warm.sys, "platform", "darwin")
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("no server process where none can run"))
    with warm.server(env={"PATH": "/usr/bin"}) as env:
        assert env == {"PATH": "/usr/bin"}
    assert "need Linux" in capsys.readouterr().err
    monkeypatch.delenv(handoff.SOCKET_ENV, raising=False)
    with warm.serving():  # the whole-study flow's server: none, and no socket named for its stages
        assert handoff.SOCKET_ENV not in os.environ
    assert handoff.SOCKET_ENV not in os.environ and "need Linux" in capsys.readouterr().err

    def no_seqpacket(*args, **kwargs):
        raise OSError(43, "Protocol not supported")

    monkeypatch.setenv(handoff.SOCKET_ENV, "/tmp/somewhere.sock")
    monkeypatch.setattr(sys, "argv", ["-m"])
    monkeypatch.setattr(sys, "orig_argv", [PY, "-m", "flows.prepare"])
    monkeypatch.setattr(handoff, "_wait_until_listening", lambda path: None)
    monkeypatch.setattr(handoff.socket, "socket", no_seqpacket)
    assert handoff.hand_off() is None  # returned: the stage goes on here
    assert "Protocol not supported" in capsys.readouterr().err


def _fake_server(path: str, events: list, pid_of_stage: int, returncode: int,
                 stage_ended: threading.Event) -> threading.Thread:
    """A server that accepts one stage, answers with `pid_of_stage` as the stage's pid, and, once `stage_ended` is
    set, with `returncode`."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(1)

    def run():
        conn, _ = listener.accept()
        msg, fds, _, _ = socket.recv_fds(conn, handoff.MAX_MESSAGE, 3)
        events.append(("request", json.loads(msg), len(fds)))
        for fd in fds:
            os.close(fd)
        conn.send(json.dumps({"pid": pid_of_stage}).encode())
        stage_ended.wait(60)
        conn.send(json.dumps({"returncode": returncode}).encode())
        conn.close()
        listener.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_the_starting_process_passes_signals_on_and_exits_as_the_stage_did(tmp_path):
    """SIGTERM to `python -m flows.<stage>` reaches the forked stage, and the launcher then dies of the same signal,
    as DVC would see of a stage process. The launcher imports only the standard library: a stage handed off costs
    no import of torch or Prefect in it."""
    stage = subprocess.Popen(["sleep", "60"])  # stands in for the forked stage
    events: list = []
    path = str(tmp_path / "s.sock")
    ended = threading.Event()
    server = _fake_server(path, events, stage.pid, -signal.SIGTERM, ended)
    env = {**os.environ, handoff.SOCKET_ENV: path, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    launcher = subprocess.Popen([PY, "-X", "importtime", "-m", "flows.evaluate", "--name", "base"], env=env,
                                stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    for _ in range(600):  # the request arrives once the launcher has imported `flows`
        if events:
            break
        time.sleep(0.05)
    assert events, "the launcher never connected"
    _, request, nfds = events[0]
    assert nfds == 3 and request["module"] == "flows.evaluate" and request["args"] == ["--name", "base"]
    assert request["cwd"] == str(tmp_path) and request["env"][handoff.SOCKET_ENV] == path
    time.sleep(0.3)  # the launcher has its signal handlers once it waits for the status
    launcher.send_signal(signal.SIGTERM)
    assert stage.wait(timeout=30) == -signal.SIGTERM  # passed on to the stage
    ended.set()
    server.join(timeout=30)
    _, err = launcher.communicate(timeout=30)
    assert launcher.returncode == -signal.SIGTERM
    imported = {line.split("|")[-1].strip().split(".")[0] for line in err.splitlines() if "import time:" in line}
    assert "flows" in imported and not imported & {"torch", "prefect", "transformers", "great_expectations"}


def test_a_server_that_is_gone_means_a_cold_stage(tmp_path):
    env = {**os.environ, handoff.SOCKET_ENV: str(tmp_path / "none.sock")}
    out = subprocess.run([PY, "-m", "flows.prepare", "--params", str(tmp_path / "missing.yaml")], env=env,
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2], timeout=120)
    assert "did not answer" in out.stderr and "running flows.prepare in this process" in out.stderr
    assert out.returncode == 2 and "missing.yaml" in out.stderr  # the stage itself ran, here, and said what it does


def _record(data_root: Path) -> dict:
    (path,) = data_root.rglob(".eapo-run-prepare.json")
    return json.loads(path.read_text())


def _lineage(params_root: Path, key: str):
    table, lineage = read_artifact(next(params_root.rglob(f"{key}.parquet")), "prompts")
    return table, asdict(lineage)


@pytest.mark.slow
def test_warm_stages_match_cold_ones_run_code_from_disk_and_fall_back_when_the_env_differs(prefect_api, tmp_path):
    project = copy_project(tmp_path / "project")
    roots = {name: tmp_path / name for name in ("cold", "warm", "failed", "edited", "other_env")}
    params = {name: write_tiny_params(root, data_root=root) for name, root in roots.items()}
    env = stage_env(prefect_api)
    cold = subprocess.run([PY, "-m", "flows.prepare", "--params", str(params["cold"])], cwd=project, env=env,
                          capture_output=True, text=True, timeout=600)
    assert cold.returncode == 0, cold.stderr[-3000:]
    script = "\n".join([
        f"python -m flows.prepare --params {params['warm']}; echo rc-warm=$?",
        f"python -m flows.prepare --params {params['failed']} -S prepare.synthetic.n=oops; echo rc-failed=$?",
        "echo 'print(\"EDITED-MARK\")' >> tasks/prepare.py",
        f"python -m flows.prepare --params {params['edited']}; echo rc-edited=$?",
        f"EAPO_TEST_OTHER=1 python -m flows.prepare --params {params['other_env']}; echo rc-other_env=$?",
    ])
    out = subprocess.run([PY, "-m", "flows.warm", "--", "bash", "-c", script], cwd=project, env=env,
                         capture_output=True, text=True, timeout=600)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert {"rc-warm=0", "rc-failed=2", "rc-edited=0", "rc-other_env=0"} <= set(out.stdout.split()), text[-3000:]
    # The stage's own stderr reached ours through the passed descriptors.
    assert "prepare.synthetic.n must be an integer" in out.stderr
    # Warm where it could be, cold where its environment differs from the server's, and the record says which.
    assert _record(roots["warm"])["process"]["warm"] is True and _record(roots["edited"])["process"]["warm"] is True
    assert _record(roots["cold"])["process"]["warm"] is False
    assert _record(roots["other_env"])["process"]["warm"] is False
    assert "environment differs in EAPO_TEST_OTHER" in out.stderr
    # The same artifacts, byte for byte in their data and lineage, as the fresh process wrote.
    for key in ("prompts_train", "prompts_test"):
        cold_table, cold_lineage = _lineage(roots["cold"], key)
        warm_table, warm_lineage = _lineage(roots["warm"], key)
        assert warm_table.equals(cold_table) and warm_lineage == cold_lineage
    # The server keeps no project module: the edit made after it started is what the next stage ran.
    assert text.count("EDITED-MARK") == 2  # the edited run and the cold fallback after it, not the first warm one
    _, edited_lineage = _lineage(roots["edited"], "prompts_train")
    assert edited_lineage["code"]["sha256"] != _lineage(roots["warm"], "prompts_train")[1]["code"]["sha256"]


def _stage_processes(wrapper: int) -> tuple[list, list]:
    """(the launchers `python -m flows.evaluate`, the stage processes the server forked) under a wrapper."""
    import psutil

    procs = psutil.Process(wrapper).children(recursive=True)
    servers = [p for p in procs if "--serve" in p.cmdline()]
    launchers = [p for p in procs if "flows.evaluate" in p.cmdline()]
    return launchers, [c for s in servers for c in s.children()]


@pytest.mark.slow
def test_a_warm_stage_stops_on_ctrl_c_and_when_its_starting_process_is_killed(prefect_api, tmp_path):
    """^C (SIGINT to the terminal's process group, which the forked stage is not in) reaches the stage through the
    process that started it; a starting process killed outright takes its stage with it; nothing is left running."""
    import psutil

    params = write_tiny_params(tmp_path, data_root=tmp_path / "data", **{
        "evaluate.num_prompts": 8, "evaluate.k": 64, "evaluate.max_new_tokens": 400})
    env = stage_env(prefect_api)
    root = Path(__file__).resolve().parents[2]
    subprocess.run([PY, "-m", "flows.prepare", "--params", str(params)], cwd=root, env=env, check=True,
                   capture_output=True, timeout=300)
    evaluate = ["python", "-m", "flows.evaluate", "--name", "base", "--params", str(params)]
    for how in ("ctrl-c", "kill the launcher"):
        with open(tmp_path / f"{how}.log", "w") as log:
            wrapper = subprocess.Popen([PY, "-m", "flows.warm", "--", *evaluate], cwd=root, env=env, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        stages: list = []
        for _ in range(1200):  # until the forked stage runs
            launchers, stages = _stage_processes(wrapper.pid)
            if stages:
                break
            time.sleep(0.05)
        assert stages and launchers, (tmp_path / f"{how}.log").read_text()[-2000:]
        time.sleep(3)  # into its work
        if how == "ctrl-c":
            os.killpg(wrapper.pid, signal.SIGINT)
        else:
            launchers[0].kill()
        returncode = wrapper.wait(timeout=120)
        _, alive = psutil.wait_procs(stages, timeout=30)
        # read the log once the stage is gone: it writes its last lines (Prefect's crash report) as it ends
        text = (tmp_path / f"{how}.log").read_text()
        assert not alive, text[-2000:]
        if how == "ctrl-c":
            assert returncode == 130 and "KeyboardInterrupt" in text  # as a cold stage on ^C: the traceback, 128+2
        else:
            assert returncode == 128 + signal.SIGKILL and "Crashed" in text  # Prefect saw it end, and says so
