"""The whole pipeline flow against a real `prefect server start` on 127.0.0.1, queried through the API."""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import copy_project, stage_env, write_tiny_params


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def prefect_server(tmp_path):
    port = free_port()
    env = {**stage_env(None), "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_UI_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                             str(port)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("prefect server did not start")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # stop it by its PID (process group)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.mark.slow
@pytest.mark.minutes(5)
def test_pipeline_flow_against_a_real_server(prefect_server, tmp_path):
    project = copy_project(tmp_path / "proj")
    write_tiny_params(project)
    env = stage_env(prefect_server)
    proc = subprocess.run([sys.executable, "-m", "flows.pipeline", "--variants", "grpo", "eapo"], cwd=project,
                          env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert (project / "data/report/report.md").exists()

    async def query():
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: prefect_server}):
            async with get_client() as client:
                runs = await client.read_flow_runs()
                flows = {f.id: f.name for f in await client.read_flows()}
                parent = next(r for r in runs if flows[r.flow_id] == "pipeline")
                tagged = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                    tags=FlowRunFilterTags(all_=[f"pipeline-run:{parent.id}"])))
                tasks = await client.read_task_runs()
                artifacts = await client.read_artifacts()
                return runs, flows, tagged, tasks, artifacts

    runs, flows, tagged, tasks, artifacts = asyncio.run(query())
    names = sorted(flows[r.flow_id] for r in runs)
    assert names.count("train") == 2 and names.count("evaluate") == 3
    assert {"pipeline", "prepare", "rollout", "annotate", "report"} <= set(names)
    assert all(r.state_type.value == "COMPLETED" for r in runs)
    assert len(tagged) == len(runs) - 1  # every stage run is grouped under the pipeline run
    assert {t.name.rsplit("-", 1)[0] for t in tasks} >= {"prepare", "rollout", "annotate", "train", "evaluate"}
    keys = {a.key for a in artifacts if a.key}
    assert {"prepare-counts", "rollout-metrics", "annotate-quadrants", "report"} <= keys


@pytest.mark.slow
def test_eapo_serve_registers_a_scheduled_deployment(prefect_server, tmp_path):
    from tests.conftest import ROOT

    env = stage_env(prefect_server)
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--cron", "0 2 * * *", "--name", "t-study"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)

    async def deployments():
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: prefect_server}):
            async with get_client() as client:
                return await client.read_deployments()

    try:
        found = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not found:
            time.sleep(2)
            found = [d for d in asyncio.run(deployments()) if d.name == "t-study"]
        assert found, "the deployment never appeared"
        assert found[0].schedules[0].schedule.cron == "0 2 * * *"
        assert found[0].parameters["project_dir"] == str(ROOT)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
