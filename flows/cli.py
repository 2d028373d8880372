"""The `eapo` command (console script `eapo = "flows.cli:app"`): the artifact inspection commands of `eapo.cli`
(validate, lineage, contracts), and the ones that compose flows: `serve` (the whole study as a deployment) and
`deploy` (the DVC stages as deployments on a work pool, for workers on other machines)."""

from __future__ import annotations

from pathlib import Path

import typer

from eapo.cli import contracts, lineage, validate

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Entropy-aware RLVR pipeline: inspect artifacts, serve the study, deploy its stages to a pool.")
for command in (validate, lineage, contracts):
    app.command()(command)


@app.command()
def serve(cron: str = typer.Option(None, help='Schedule, e.g. "0 2 * * *"; without it the deployment runs on demand.'),
          name: str = typer.Option("eapo-study", help="Deployment name."),
          project_dir: Path = typer.Option(Path("."), help="The DVC project to reproduce.")):
    """Serve the whole-pipeline flow as a Prefect deployment (trigger or schedule it from the UI).

    Start a server first (`make server` or `prefect server start`) and point PREFECT_API_URL at it."""
    from flows.pipeline import serve as serve_pipeline

    serve_pipeline(cron=cron, name=name, project_dir=str(project_dir))


@app.command()
def deploy(pool: str = typer.Option(..., help="Process work pool to deploy to (created if missing)."),
           stage: list[str] = typer.Option(None, help="Stages of dvc.yaml to deploy (repeatable; default: all)."),
           project_dir: Path = typer.Option(Path("."), help="The DVC project (its dvc.yaml and params.yaml).")):
    """Register the DVC stages as deployments of flow `dvc-stage` on a process work pool.

    `train` and `evaluate` take `variant` and `seed`. Then, on each machine, in a checkout of the same commit with
    the same DVC remote: `prefect worker start --pool POOL --limit 1`; and here:
    `python -m flows.pipeline --pool POOL`. Needs a Prefect server (PREFECT_API_URL)."""
    from flows.pools import deploy as deploy_stages

    try:
        names = deploy_stages(pool, project_dir, stage or None)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    for name in names:
        typer.echo(f"deployed {name} on pool {pool}")


if __name__ == "__main__":
    app()
