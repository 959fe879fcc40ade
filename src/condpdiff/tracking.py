"""MLflow glue: one run per DVC stage, nested runs inside, FAILED on any error.

The store defaults to `sqlite:///<repo>/mlruns/mlflow.db` with artifacts in
`<repo>/mlruns/artifacts`, where <repo> is the main repository even when DVC runs a stage
in a temporary experiment folder under `<repo>/.dvc/`. `MLFLOW_TRACKING_URI` overrides
(a team's tracking server: README, Running as a team).

Against a server, a stage checks that it answers before any work and fails within seconds
when it does not (MLflow's own HTTP defaults retry for minutes). Every run records the process
that owns it; a run whose process died without ending it (SIGKILL, out of memory, a server that
was down at the end) is marked FAILED by the next stage on that host, or by
`python -m condpdiff runs cleanup`.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import mlflow
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException

from condpdiff.config import Params, flatten_dict, params_hash, params_to_dict

EXPERIMENT = "condpdiff"
MAX_PARAM_LENGTH = 500  # MLflow refuses longer param values
# against a server: retries that ride out ~15 s of outage mid-stage, not MLflow's default of minutes (its
# start is checked at once, apart from these); a user's own settings win
HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
PROCESS_TAG = "process"  # host:boot:pid:start of the process that owns a run


class TrackingUnavailable(RuntimeError):
    """The tracking server does not answer."""


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


def check_server(uri: str, seconds: float = 5.0) -> None:
    """An http(s) tracking URI must answer within `seconds` (any HTTP status: behind basic-auth it is 401), with
    MLflow's own TLS settings (a private CA, or verification off)."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    verify = (os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH")
              or os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "false").lower() != "true")
    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=seconds, verify=verify).close()
        return
    except requests.exceptions.SSLError as error:
        reason = f"TLS: {error}"
    except requests.Timeout:
        reason = f"no answer within {seconds:.0f} s"
    except requests.ConnectionError:
        reason = "connection refused, or the host is unreachable"
    except requests.RequestException as error:
        reason = str(error)
    raise TrackingUnavailable(f"the MLflow tracking server {uri} does not answer ({reason}); start it, or unset "
                              "MLFLOW_TRACKING_URI to use the local store")


def setup_experiment(name: str = EXPERIMENT) -> str:
    """Create the experiment once and make it the active one (nested runs land in it too)."""
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        for key, value in HTTP_SETTINGS.items():
            os.environ.setdefault(key, value)
        check_server(uri)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        artifacts = None
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            artifacts = (repo_root() / "mlruns" / "artifacts").as_uri()
        try:
            experiment_id = mlflow.create_experiment(name, artifact_location=artifacts)
        except MlflowException as error:  # another process (a queued experiment) created it since we looked
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment_id = mlflow.get_experiment_by_name(name).experiment_id
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _process_start(pid: int) -> str:
    """When the process started (clock ticks since boot), so a reused pid is not taken for the old process;
    'Z' for a zombie (killed, not yet reaped: dead); '?' where /proc cannot tell."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return "?"
    return "Z" if fields[0] == "Z" else fields[19]


def _read(path: str, default: str = "?") -> str:
    try:
        return Path(path).read_text().strip()[:8] or default
    except OSError:
        return default


def _host() -> str:
    """The host and pid namespace a pid belongs to: two containers on one machine share a hostname but not pids."""
    try:
        namespace = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        namespace = "?"
    return f"{socket.gethostname()}/{_read('/etc/machine-id')}/{namespace}"


def process_identity(pid: int | None = None) -> str:
    """host/machine/pid-namespace:boot:pid:start of a process (this one by default): a run's owner."""
    pid = os.getpid() if pid is None else pid
    return f"{_host()}:{_read('/proc/sys/kernel/random/boot_id')}:{pid}:{_process_start(pid)}"


def _owner_alive(identity: str) -> bool | None:
    """Whether the process that owns a run still runs; None when this process cannot tell (another host or
    pid namespace, another boot, no /proc): such a run is only ended by age (`runs cleanup --older-than`)."""
    host, boot, pid, start = (identity.rsplit(":", 3) + ["?"] * 4)[:4]
    if host != _host() or boot == "?" or boot != _read("/proc/sys/kernel/random/boot_id") or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    now = _process_start(int(pid))
    return None if now == "?" else now == start


def fail_abandoned_runs(client, experiment_id: str, older_than_hours: float | None = None) -> list[str]:
    """RUNNING runs whose process is gone become FAILED, their RUNNING children too. A dead process cannot
    go on with its run, so any stage may mark any such run. A run whose owner cannot be seen from here is
    judged by age alone, and only when `older_than_hours` is given. Housekeeping: a run it may not or
    cannot mark is skipped with a warning, never an error."""
    failed: list[str] = []
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=1000):
        if run.info.run_id in failed:
            continue
        alive = _owner_alive(run.data.tags.get(PROCESS_TAG, ""))
        age_hours = (time.time() - run.info.start_time / 1000) / 3600
        if alive is False or (alive is None and older_than_hours is not None and age_hours > older_than_hours):
            reason = ("its process ended without ending the run (killed, or the server was unreachable then)"
                      if alive is False else f"RUNNING for {age_hours:.1f} h, its process out of sight")
            try:
                for child in client.search_runs([experiment_id], f"attributes.status = 'RUNNING' and "
                                                f"tags.mlflow.parentRunId = '{run.info.run_id}'", max_results=1000):
                    _fail(client, child.info.run_id, f"its parent run {run.info.run_id} was abandoned")
                    failed.append(child.info.run_id)
                _fail(client, run.info.run_id, reason)
                failed.append(run.info.run_id)
            except mlflow.exceptions.MlflowException as error:
                print(f"warning: could not mark abandoned run {run.info.run_id} FAILED: {error.message}",
                      file=sys.stderr)
    return failed


def _fail(client, run_id: str, reason: str) -> None:
    client.set_tag(run_id, "failed_reason", reason)
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))


@contextlib.contextmanager
def stage_run(stage: str, params: Params, **tags: str) -> Iterator[mlflow.ActiveRun]:
    """One MLflow run for one DVC stage, tagged so a whole `dvc repro` can be grouped.

    The run carries the whole validated params file, flattened: the compare view then shows the
    param that made two runs differ (a sampler, say) beside the metric it changed, whichever
    stage it belongs to. Runs abandoned by a dead process on this host are FAILED first. Under torchrun
    rank 0 alone tracks the stage (the other ranks get None).
    """
    if not _main_rank():
        yield None
        return
    experiment_id = setup_experiment(EXPERIMENT if params.branch == "text" else f"{EXPERIMENT}-{params.branch}")
    fail_abandoned_runs(mlflow.MlflowClient(), experiment_id)
    tags = {
        "stage": stage,
        "git_commit": git_commit(),
        "dvc_experiment": os.environ.get("DVC_EXP_NAME", "workspace"),
        "pipeline_id": params_hash(params),
        "norm": params.norm.value,
        PROCESS_TAG: process_identity(),
        **tags,
    }
    flat = flatten_dict(params_to_dict(params))
    # a SIGTERM (dvc interrupted, a job killed) becomes SystemExit, so the run still ends FAILED
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    run = mlflow.start_run(run_name=stage, experiment_id=experiment_id, tags=tags)
    try:
        mlflow.log_params({k: str(v)[:MAX_PARAM_LENGTH] for k, v in flat.items()})
        yield run
    except BaseException as error:
        _end_failed(stage, error)
        raise
    mlflow.end_run()


def _end_failed(stage: str, error: BaseException) -> None:
    """End the active run FAILED. A server that stopped answering is named as the cause; the run it cannot
    mark stays RUNNING until the next stage on this host (or `runs cleanup`) marks it."""
    uri = mlflow.get_tracking_uri()
    try:
        check_server(uri)
    except TrackingUnavailable as down:
        raise TrackingUnavailable(f"stage {stage}: {down}; the run stays RUNNING until the next stage on this host "
                                  "or `python -m condpdiff runs cleanup` marks it FAILED") from error
    try:
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
    except Exception as failure:  # the stage's own error matters more; the run is marked later
        print(f"warning: could not mark the {stage} run FAILED: {failure}", file=sys.stderr)


def _main_rank() -> bool:
    """Rank 0 of a torchrun launch (its RANK variable), or no launch at all: the process that tracks."""
    return os.environ.get("RANK", "0") == "0"


def metric_logger(prefix: str = ""):
    """An `on_step(step, metrics)` callback that logs to the active run (nothing on ranks other than 0)."""
    if not _main_rank():
        return lambda step, metrics: None

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
