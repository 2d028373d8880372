"""The study across machines: DVC stages as Prefect deployments on a process work pool, artifacts through a DVC remote.

    eapo deploy --pool gpus                              # register the stage deployments (creates the pool if missing)
    prefect worker start --pool gpus --limit 1           # on each machine, in a checkout of the same commit
    python -m flows.pipeline --pool gpus [--seeds 0 1 2] # the whole study, its (variant, seed) stages on the workers

Nothing here schedules anything itself: Prefect's work pool hands runs to workers, and DVC decides what is stale and
moves the artifacts.

**A worker's run** (flow `dvc-stage`, deployments `train`, `evaluate`, ... with parameters `variant` and `seed` that
select one stage of the matrix): in the worker's own checkout it writes the study's params.yaml (passed by the parent),
runs `dvc repro --pull <stage>` (so DVC's lock and cache hold: upstream stages the parent already ran are restored
from DVC's run cache on the remote instead of rerun), then pushes the stage's outputs, its run-cache entries and the
objects they name (the git-held metrics included) to the DVC remote.

**The parent** (`pipeline` flow with `pool`): applies the overrides to params.yaml (as `dvc exp run -S` would, without
recording an experiment), reproduces the stages upstream of the matrix and pushes them, asks DVC which (variant, seed)
pairs are stale (`Repo.status`), submits one `evaluate@<variant>-<seed>` run per stale pair (`run_deployment`, as
subflows, so the UI shows them under the parent; DVC runs `train@<variant>-<seed>` first within it), reproduces the
stages no pair needs (annotate, evaluate_base) meanwhile, waits, restores each finished pair from the run cache on the
remote (`dvc pull` of its outputs, recorded in the parent's dvc.lock), and reproduces the rest (the report).
A failed child fails the parent naming the child and its error; the pairs that finished are restored first, so a
rerun resubmits only what is still stale.

Each worker needs its own checkout (DVC locks a workspace per command) and `--limit 1` (one stage at a time there).
The package must be importable from the worker's checkout: `pip install -e .` there (`make install`) or
`PYTHONPATH=<checkout>`; the deployment's pull step enters the checkout that holds the imported `flows` package, or
`EAPO_CHECKOUT` where set.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

STAGE_FLOW = "dvc-stage"
# The DVC matrix stages that run once per (variant, seed); the parent fans out the last one, DVC runs the others first.
MATRIX_STAGES = ("train", "evaluate")
FAN_OUT_STAGE = "evaluate"
ENTRYPOINT = "flows.pools.stage_flow"
PULL_STEP = "flows.pools.enter_checkout"
# How many lines of a failed `dvc repro` the child's error (and so the parent's) carries.
ERROR_TAIL_LINES = 25


class StageRunFailed(RuntimeError):
    """`dvc repro` of a stage failed on a worker; the message names the stage, the worker and the output's tail."""


class PoolStudyFailed(RuntimeError):
    """One or more (variant, seed) runs on the pool failed; the message names each child and its error."""


# ---------------------------------------------------------------------------------------------------------------------
# Pure helpers


def stage_address(stage: str, variant: str | None = None, seed: int | None = None) -> str:
    """DVC's name for one stage: `train@grpo-0` for a matrix stage (variant and seed required), else `stage`."""
    if stage in MATRIX_STAGES:
        if variant is None or seed is None:
            raise ValueError(f"stage {stage!r} runs per (variant, seed): give both variant and seed")
        return f"{stage}@{variant}-{seed}"
    if variant is not None or seed is not None:
        raise ValueError(f"stage {stage!r} is not a (variant, seed) stage: it takes no variant or seed")
    return stage


def stale_pairs(status: dict[str, Any], pairs: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The (variant, seed) pairs whose train or evaluate stage DVC's status lists as changed, in study order."""
    return [(v, s) for v, s in pairs if any(stage_address(m, v, s) in status for m in MATRIX_STAGES)]


def failure_report(failed: list[tuple[str, str]], total: int, pool: str) -> str:
    """One line per failed child: its name and its error."""
    lines = [f"{len(failed)} of {total} stage runs on pool {pool!r} failed:"]
    lines += [f"  {name}: {error}" for name, error in failed]
    return "\n".join(lines)


def output_tail(text: str, lines: int = ERROR_TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def git_head(root: Path) -> str | None:
    """The checkout's commit, or None outside git."""
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def uncommitted(root: Path, ignore: tuple[str, ...] = ("params.yaml", "dvc.lock", "data/")) -> list[str]:
    """Tracked files changed since the last commit, besides those a study run changes itself: workers check out the
    commit, so these changes would not reach them."""
    proc = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                          text=True)
    paths = [line[3:].strip() for line in proc.stdout.splitlines()] if proc.returncode == 0 else []
    return [p for p in paths if not p.startswith(ignore)]


def tool_env() -> dict[str, str]:
    """The environment for DVC and its stage commands: this interpreter's bin first on PATH, so a stage's `python`
    is the one running this flow (as `make run` arranges for the project's venv)."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def dvc_executable() -> str:
    local = Path(sys.executable).parent / "dvc"
    return str(local) if local.exists() else "dvc"


# ---------------------------------------------------------------------------------------------------------------------
# DVC: run cache and remote


def _run_cache_keys(stage) -> tuple[str, str]:
    # DVC keys a run-cache entry by the stage's command, deps and params (key) and its outputs (value). DVC 3.67 has no
    # public helper for one stage's pair; these two are what `StageCache.save` itself uses.
    from dvc.stage.cache import _get_cache_hash, _get_stage_hash
    from dvc.stage.serialize import to_single_stage_lockfile

    return _get_stage_hash(stage), _get_cache_hash(to_single_stage_lockfile(stage))


def push_stages(repo, targets: list[str]) -> int:
    """Push the outputs of `targets` and their upstream stages, the run cache, and every object the targets' run-cache
    entries name. `dvc push --run-cache` sends the entries but not the objects of `cache: false` outputs (our metrics
    JSON), which DVC's run cache holds too; without them another checkout cannot restore the stage. Like DVC's own
    commands, run it in the repository's root (stage names resolve against the working directory)."""
    from dvc.repo import lock_repo
    from dvc.stage.cache import _can_hash

    stages = list({s: None for t in targets for s in repo.stage.collect(t, with_deps=True)})
    with lock_repo(repo):
        for stage in stages:  # an up-to-date stage whose outputs came from elsewhere has no entry yet: record it
            if _can_hash(stage) and all(out.hash_info for out in stage.outs) and not stage.changed():
                repo.stage_cache.save(stage)
    pushed = repo.push(targets=targets, with_deps=True, run_cache=True)
    keys = [_run_cache_keys(s) for s in stages if _can_hash(s)]
    for odb, objs in repo.stage_cache.get_used_objs(keys).items():
        result = repo.cloud.push(objs, odb=odb)
        if result.failed:
            raise RuntimeError(f"dvc push: {len(result.failed)} run-cache objects could not be uploaded "
                               f"({', '.join(sorted(h.obj_name or h.value for h in result.failed))})")
        pushed += len(result.transferred)
    return pushed


def restore_stage(repo, address: str) -> bool:
    """Bring a stage another checkout ran into this one from the run cache on the remote (its outputs pulled and
    checked out, its dvc.lock entry written). False if it was already up to date; RunCacheNotFoundError if the
    remote has no entry for its current deps and params. Run it in the repository's root."""
    from dvc.repo import lock_repo

    (stage,) = repo.stage.collect(address)
    with lock_repo(repo):
        if not stage.changed():
            return False
        repo.stage_cache.restore(stage, pull=True)
        stage.save()
        stage.commit()
        stage.dump(update_pipeline=False)
    return True


def require_remote(repo) -> str:
    from dvc.config import NoRemoteError

    try:
        remote = repo.cloud.get_remote()
    except NoRemoteError as exc:
        raise RuntimeError(f"{repo.root_dir}: no default DVC remote; the workers share artifacts through one "
                           "(`dvc remote add -d store s3://bucket/path`, the same on every checkout)") from exc
    return remote.path


# ---------------------------------------------------------------------------------------------------------------------
# The worker's side


def checkout_root() -> Path:
    """The project checkout a worker runs stages in: `EAPO_CHECKOUT`, else the one holding this `flows` package."""
    configured = os.environ.get("EAPO_CHECKOUT")
    root = Path(configured).expanduser().resolve() if configured else Path(__file__).resolve().parents[1]
    if not (root / "dvc.yaml").is_file():
        where = "EAPO_CHECKOUT" if configured else "the checkout this `flows` package was imported from"
        raise RuntimeError(f"{root} ({where}) has no dvc.yaml: start the worker from a checkout of the project "
                           "with it installed (`pip install -e .`) or on PYTHONPATH, or set EAPO_CHECKOUT")
    return root


def enter_checkout() -> dict[str, str]:
    """The deployments' pull step: run the flow in this worker's checkout (Prefect changes into `directory`)."""
    return {"directory": str(checkout_root())}


def _child_run_name() -> str:
    from prefect.runtime import flow_run

    p = flow_run.parameters
    try:
        return stage_address(p.get("stage", "?"), p.get("variant"), p.get("seed"))
    except ValueError:
        return str(p.get("stage"))


@flow(name=STAGE_FLOW, flow_run_name=_child_run_name,
      description="One DVC stage on a worker: `dvc repro --pull <stage>` in its checkout, then `dvc push`.")
def stage_flow(stage: str, variant: str | None = None, seed: int | None = None, params_yaml: str | None = None,
               commit: str | None = None, push: bool = True) -> dict:
    """Run one DVC stage here.

    Args:
        stage: a stage of dvc.yaml (`train`, `evaluate`, `evaluate_base`, `report`, ...).
        variant: for a matrix stage (`train`, `evaluate`), the variant (a key of `variants`, one of `study.variants`).
        seed: for a matrix stage, the study seed (one of `study.seeds`).
        params_yaml: the study's params.yaml text; written into this checkout first so the stage, its DVC name and its
            run-cache key are the parent's. None keeps the checkout's own.
        commit: the parent's git commit; the run fails at once if this checkout is at another one.
        push: push the outputs, run cache and run-cache objects to the default DVC remote afterwards.
    """
    logger = get_run_logger()
    root = Path.cwd()
    target = stage_address(stage, variant, seed)
    host = socket.gethostname()
    where = f"{host}:{root}"
    if not (root / "dvc.yaml").is_file():
        raise StageRunFailed(f"{target}: {where} is not a project checkout (no dvc.yaml)")
    head = git_head(root)
    if commit and head != commit:
        raise StageRunFailed(f"{target}: the worker's checkout {where} is at commit {str(head)[:12]}, the study at "
                             f"{commit[:12]}: check out the same commit on every worker")
    if params_yaml is not None:
        params = root / "params.yaml"
        if not params.exists() or params.read_text() != params_yaml:
            tmp = params.with_name(f".params.yaml.{os.getpid()}.tmp")
            tmp.write_text(params_yaml)
            os.replace(tmp, params)
    logger.info("%s: dvc repro --pull %s", where, target)
    t0 = time.perf_counter()
    proc = subprocess.run([dvc_executable(), "repro", "--pull", target], cwd=root, env=tool_env(),
                          capture_output=True, text=True)
    output = (proc.stdout + proc.stderr).strip()
    if output:
        logger.info("%s", output)
    if proc.returncode != 0:
        raise StageRunFailed(f"dvc repro {target} failed (exit {proc.returncode}) on {where}:\n{output_tail(output)}")
    pushed = 0
    if push:
        from dvc.repo import Repo

        with Repo(str(root)) as repo:
            require_remote(repo)
            pushed = push_stages(repo, [target])
        logger.info("%s: pushed %d files for %s and its upstream stages", where, pushed, target)
    return {"stage": target, "host": host, "checkout": str(root), "pushed": pushed,
            "seconds": round(time.perf_counter() - t0, 1)}


# ---------------------------------------------------------------------------------------------------------------------
# Deployments


def dvc_stage_names(root: Path) -> list[str]:
    """The stage definitions of dvc.yaml (`train`, not `train@grpo-0`)."""
    import yaml

    return list((yaml.safe_load((root / "dvc.yaml").read_text()) or {}).get("stages", {}))


def deploy(pool: str, project_dir: str | Path = ".", stages: list[str] | None = None) -> list[str]:
    """Register flow `dvc-stage` once per stage of dvc.yaml (default: all; `train` and `evaluate` take `variant` and
    `seed`) as deployments on the process work pool `pool`, created if missing. Returns the deployment names."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.utilities.callables import parameter_schema
    from prefect.workers.process import ProcessWorker

    from eapo.config import load_params

    root = Path(project_dir).resolve()
    load_params(root / "params.yaml")  # fail fast on a broken params file
    known = dvc_stage_names(root)
    stages = list(stages or known)
    unknown = [s for s in stages if s not in known]
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)}; dvc.yaml defines {', '.join(known)}")
    schema = parameter_schema(stage_flow).model_dump(exclude_unset=True)
    names = []
    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=pool, type=ProcessWorker.type,
                                                   base_job_template=ProcessWorker.get_default_base_job_template()))
        except ObjectAlreadyExists:
            existing = client.read_work_pool(pool)
            if existing.type != ProcessWorker.type:
                raise ValueError(f"work pool {pool!r} exists with type {existing.type!r}; these deployments need a "
                                 f"{ProcessWorker.type!r} pool") from None
        flow_id = client.create_flow_from_name(STAGE_FLOW)
        for name in stages:
            matrix = name in MATRIX_STAGES
            client.create_deployment(
                flow_id=flow_id, name=name, work_pool_name=pool, entrypoint=ENTRYPOINT,
                pull_steps=[{PULL_STEP: {}}], parameters={"stage": name}, parameter_openapi_schema=schema,
                tags=["eapo"], job_variables={}, path=None,
                description=(f"dvc repro --pull {name}@<variant>-<seed> (give variant and seed), then dvc push"
                             if matrix else f"dvc repro --pull {name}, then dvc push"))
            names.append(f"{STAGE_FLOW}/{name}")
    return names


# ---------------------------------------------------------------------------------------------------------------------
# The parent's side


@dataclass
class Child:
    variant: str
    seed: int
    name: str
    flow_run_id: Any


@task(name="dvc-repro-local", cache_policy=NO_CACHE)
def repro_local(root: str, targets: list[str] | None) -> list[str]:
    """`dvc repro` here: of `targets`, or of everything with None ([] does nothing)."""
    from dvc.repo import Repo

    if targets is not None and not targets:
        return []
    with Repo(root) as repo:
        return [s.addressing for s in repo.reproduce(targets=targets)]


@task(name="dvc-push", cache_policy=NO_CACHE)
def push_local(root: str, targets: list[str]) -> int:
    from dvc.repo import Repo

    if not targets:
        return 0
    with Repo(root) as repo:
        return push_stages(repo, targets)


def _graph_sets(repo, matrix: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(upstream, independent, downstream) of the matrix stages, as DVC addressings in DVC's stage order."""
    import networkx as nx

    graph = repo.index.graph  # edges point from a stage to the stages it depends on
    by_name = {s.addressing: s for s in repo.index.stages}
    nodes = [by_name[a] for a in matrix]
    up = set().union(*(nx.descendants(graph, n) for n in nodes)) if nodes else set()
    down = set().union(*(nx.ancestors(graph, n) for n in nodes)) if nodes else set()
    mset = set(nodes)
    order = [s for s in repo.index.stages]
    upstream = [s.addressing for s in order if s in up and s not in mset]
    downstream = [s.addressing for s in order if s in down and s not in mset]
    independent = [s.addressing for s in order if s not in up | down | mset]
    return upstream, independent, downstream


def _check_deployment(client, pool: str) -> str:
    from prefect.exceptions import ObjectNotFound

    name = f"{STAGE_FLOW}/{FAN_OUT_STAGE}"
    try:
        deployment = client.read_deployment_by_name(name)
    except ObjectNotFound:
        raise RuntimeError(f"no deployment {name!r} on this Prefect server: run `eapo deploy --pool {pool}` "
                           "first") from None
    if deployment.work_pool_name != pool:
        raise RuntimeError(f"deployment {name!r} is on work pool {deployment.work_pool_name!r}, not {pool!r}: run "
                           f"`eapo deploy --pool {pool}`")
    return name


def _wait(client, children: list[Child], poll_s: float, logger) -> list[tuple[Child, Any]]:
    pending = {c.flow_run_id: c for c in children}
    done: list[tuple[Child, Any]] = []
    last_note = time.monotonic()
    while pending:
        for run_id, child in list(pending.items()):
            run = client.read_flow_run(run_id)
            if run.state is not None and run.state.is_final():
                del pending[run_id]
                done.append((child, run.state))
                logger.info("%s: %s%s", child.name, run.state.type.value,
                            f" ({run.state.message})" if not run.state.is_completed() and run.state.message else "")
        if pending:
            if time.monotonic() - last_note > 60:
                logger.info("waiting for %s", ", ".join(c.name for c in pending.values()))
                last_note = time.monotonic()
            time.sleep(poll_s)
    return done


def settle(finished: list[tuple[Child, Any]], restore: Callable[[str], bool],
           not_found: type[BaseException]) -> tuple[list[str], list[tuple[str, str]]]:
    """After the children: restore every completed pair's stages here (train, then evaluate) with `restore(address)`
    (True if it changed anything; `not_found` if the remote has no run-cache entry), even when others failed, so a
    rerun finds them up to date. Returns (restored addresses, [(child name, error)] for the failed ones)."""
    restored: list[str] = []
    failed: list[tuple[str, str]] = []
    for child, state in finished:
        if not state.is_completed():
            failed.append((child.name, f"{state.type.value}: {state.message or 'no message'}"))
            continue
        for address in (stage_address(m, child.variant, child.seed) for m in MATRIX_STAGES):
            try:
                if restore(address):
                    restored.append(address)
            except not_found:
                failed.append((child.name, f"{address} finished on its worker, but the DVC remote has no "
                                           "run-cache entry for it (is the worker at the same commit, with the "
                                           "same remote?)"))
                break
    return restored, failed


def run_study_on_pool(root: Path, pool: str, overrides: dict[str, Any], poll_s: float = 5.0) -> dict:
    """The parent's side of a pooled study (see the module docstring). Call it inside a flow run: the children are
    linked to it as subflows."""
    from dvc.repo import Repo
    from dvc.stage.cache import RunCacheNotFoundError
    from dvc.utils.hydra import apply_overrides
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    from eapo.config import load_params
    from flows.pipeline import dvc_set_args

    logger = get_run_logger()
    params_path = root / "params.yaml"
    if overrides:  # DVC's own -S machinery, as `dvc exp run -S` applies it to the workspace
        sets = dvc_set_args(overrides)
        apply_overrides(params_path, sets)
        logger.info("params.yaml: applied %s", " ".join(f"-S {s}" for s in sets))
    params = load_params(params_path)
    pairs = [(v, s) for v in params.study.variants for s in params.study.seeds]
    matrix = [stage_address(m, v, s) for v, s in pairs for m in MATRIX_STAGES]

    with get_client(sync_client=True) as client:
        deployment = _check_deployment(client, pool)
    with Repo(str(root)) as repo:
        remote = require_remote(repo)
        upstream, independent, _ = _graph_sets(repo, matrix)
    logger.info("DVC remote %s; upstream %s; fan-out over %d (variant, seed) pairs", remote, upstream, len(pairs))
    repro_local(str(root), upstream)
    push_local(str(root), upstream)
    with Repo(str(root)) as repo:
        stale = stale_pairs(repo.status(targets=matrix), pairs)
    logger.info("stale: %s", ", ".join(f"{v}-{s}" for v, s in stale) or "none")

    params_yaml = params_path.read_text()
    commit = git_head(root)
    if changed := uncommitted(root):
        logger.warning("uncommitted changes the workers will not have (they run commit %s): %s", str(commit)[:12],
                       ", ".join(changed))
    children = []
    for variant, seed in stale:
        name = stage_address(FAN_OUT_STAGE, variant, seed)
        run = run_deployment(deployment, parameters={"variant": variant, "seed": seed, "params_yaml": params_yaml,
                                                     "commit": commit},
                             flow_run_name=name, timeout=0, as_subflow=True, tags=["eapo", f"pool:{pool}"])
        children.append(Child(variant, seed, name, run.id))
    if children:
        logger.info("submitted %d runs to pool %r: %s", len(children), pool, ", ".join(c.name for c in children))

    repro_local(str(root), independent)  # the stages no pair needs run here meanwhile
    with get_client(sync_client=True) as client:
        finished = _wait(client, children, poll_s, logger)

    with Repo(str(root)) as repo:
        if any(state.is_completed() for _, state in finished):
            repo.stage_cache.pull(None)
        restored, failed = settle(finished, lambda address: restore_stage(repo, address), RunCacheNotFoundError)
    if restored:
        logger.info("restored from the DVC remote: %s", ", ".join(restored))
    if failed:
        raise PoolStudyFailed(failure_report(failed, len(children), pool))
    ran = repro_local(str(root), None)  # the rest (the report): everything else is up to date by now
    return {"stale": [f"{v}-{s}" for v, s in stale], "children": [c.name for c in children], "restored": restored,
            "ran_here": ran, "pool": pool}


def main(argv: list[str] | None = None) -> int:
    """`python -m flows.pools push STAGE...`: push stages run by hand (e.g. under `accelerate launch`, then
    `dvc commit -f STAGE`) the way a worker does, so the pooled study restores them instead of running them again."""
    import argparse

    from dvc.repo import Repo

    parser = argparse.ArgumentParser(prog="python -m flows.pools", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    push = sub.add_parser("push", help="push stages' outputs, run cache and run-cache objects to the DVC remote")
    push.add_argument("stages", nargs="+", help="DVC stage names, e.g. train@eapo-0")
    args = parser.parse_args(argv)
    with Repo(".") as repo:
        require_remote(repo)
        print(f"pushed {push_stages(repo, args.stages)} files")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
