"""MLflow glue: one run per DVC stage, nested runs inside, FAILED on any error.

The store defaults to `sqlite:///<repo>/mlruns/mlflow.db` with artifacts in
`<repo>/mlruns/artifacts`, where <repo> is the main repository even when DVC runs a stage
in a temporary experiment folder under `<repo>/.dvc/`. `MLFLOW_TRACKING_URI` overrides.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import mlflow

from condpdiff.config import Params, flatten_dict, params_hash, params_to_dict

EXPERIMENT = "condpdiff"
MAX_PARAM_LENGTH = 500  # MLflow refuses longer param values


def repo_root(start: Path | None = None) -> Path:
    """The main repository, also from inside DVC's temporary experiment folders."""
    path = (start or Path.cwd()).resolve()
    parts = path.parts
    if ".dvc" in parts:  # a DVC temp experiment folder under <repo>/.dvc/: the workspace it copied
        return Path(*parts[: parts.index(".dvc")])
    for candidate in (path, *path.parents):
        if (candidate / ".dvc").is_dir() or (candidate / ".git").exists():
            return candidate
    return path


def tracking_uri() -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    store = repo_root() / "mlruns"
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


def setup_experiment(name: str = EXPERIMENT) -> str:
    """Create the experiment once and make it the active one (nested runs land in it too)."""
    mlflow.set_tracking_uri(tracking_uri())
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        artifacts = None
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            artifacts = (repo_root() / "mlruns" / "artifacts").as_uri()
        experiment_id = mlflow.create_experiment(name, artifact_location=artifacts)
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@contextlib.contextmanager
def stage_run(stage: str, params: Params, **tags: str) -> Iterator[mlflow.ActiveRun]:
    """One MLflow run for one DVC stage, tagged so a whole `dvc repro` can be grouped.

    The run carries the whole validated params file, flattened: the compare view then shows the
    param that made two runs differ (a sampler, say) beside the metric it changed, whichever
    stage it belongs to.
    """
    experiment_id = setup_experiment()
    tags = {
        "stage": stage,
        "git_commit": git_commit(),
        "dvc_experiment": os.environ.get("DVC_EXP_NAME", "workspace"),
        "pipeline_id": params_hash(params),
        "norm": params.norm.value,
        **tags,
    }
    flat = flatten_dict(params_to_dict(params))
    # a SIGTERM (dvc interrupted, a job killed) becomes SystemExit, so the run still ends FAILED
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    with mlflow.start_run(run_name=stage, experiment_id=experiment_id, tags=tags) as run:
        mlflow.log_params({k: str(v)[:MAX_PARAM_LENGTH] for k, v in flat.items()})
        yield run  # ActiveRun.__exit__ ends the run FAILED if the stage raises


def metric_logger(prefix: str = ""):
    """An `on_step(step, metrics)` callback that logs to the active run."""

    def on_step(step: int, metrics: dict) -> None:
        mlflow.log_metrics({f"{prefix}{k}": v for k, v in metrics.items()}, step=step)

    return on_step


def newest_finished_run(client, experiment_id: str, stage: str, pipeline_id: str | None = None, **tags: str):
    """The newest FINISHED run of `stage` whose tags match `tags` (collect: task=...), or None. With a
    `pipeline_id` (`params_hash` of the params in use), a run of that configuration comes first; a stage that
    other params did not re-run (collect, after a generator change) has only older runs, and the newest is used."""
    query = " and ".join([f"tags.stage = '{stage}'", "attributes.status = 'FINISHED'",
                          *(f"tags.{key} = '{value}'" for key, value in tags.items())])
    for extra in ([f" and tags.pipeline_id = '{pipeline_id}'"] if pipeline_id else []) + [""]:
        runs = client.search_runs([experiment_id], query + extra, order_by=["attributes.start_time DESC"],
                                  max_results=1)
        if runs:
            return runs[0]
    return None
