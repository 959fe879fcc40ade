"""The faults a team setup must survive, each run once on loopback against a real PostgreSQL-backed
tracking server, with what the user sees and how long it took:

    python benchmarks/team_faults.py            # reports/bench/team_faults.{json,md}

1. the tracking server is down when a stage starts;
2. the server is killed mid-stage, then restarted;
3. a stage is killed with SIGKILL;
4. two Optuna workers share a study on PostgreSQL and one is killed with SIGKILL mid-trial.

The stages are the real ones (prepare, collect) on the tiny profile, collect made long enough to be killed.
tests/test_team.py runs the same scenarios and asserts on their outcome (never on their times).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import mlflow
import optuna
import yaml

from condpdiff import servers

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Team:
    """A working folder with the tiny params, and the commands a team member runs. `env` adds to their
    environment (the tests shorten MLflow's HTTP retries with it; the benchmark keeps the project's)."""
    folder: Path
    env: dict

    @classmethod
    def create(cls, folder: Path, collect_steps: int = 300, env: dict | None = None) -> "Team":
        params = yaml.safe_load((REPO / "profiles" / "tiny.yaml").read_text())
        params["collect"]["steps"] = collect_steps
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "params.yaml").write_text(yaml.safe_dump(params))
        return cls(folder, env or {})

    @property
    def prepared(self) -> Path:
        return self.folder / "prepared" / "sst2"

    def command(self, uri: str, *arguments: str, wait: bool = True):
        env = {**os.environ, **self.env, "MLFLOW_TRACKING_URI": uri, "TQDM_DISABLE": "1"}
        command = [sys.executable, *arguments, "--params", str(self.folder / "params.yaml")]
        if wait:
            return subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=900)
        return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def prepare(self, uri: str, out: Path | None = None):
        return self.command(uri, "pipeline/prepare.py", "--task", "sst2", "--glue", str(REPO / "data" / "glue"),
                            "--out", str(out or self.prepared))

    def collect(self, uri: str) -> subprocess.Popen:
        return self.command(uri, "pipeline/collect.py", "--task", "sst2", "--prepared", str(self.prepared),
                            "--out", str(self.folder / "collect"), wait=False)

    def tune(self, uri: str, storage: str, trials: int, study: str) -> subprocess.Popen:
        return self.command(uri, "-m", "condpdiff", "tune", "--prepared", str(self.prepared.parent), "--tasks", "sst2",
                            "--trials", str(trials), "--steps", "90", "--ranks", "1", "--threads", "1",
                            "--heartbeat", "2", "--storage", storage, "--study", study,
                            "--out", str(self.folder / "best.txt"), wait=False)


def runs(uri: str, query: str) -> list:
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("condpdiff")
    return client.search_runs([experiment.experiment_id], query) if experiment else []


def wait_for_runs(uri: str, query: str, count: int, processes: list[subprocess.Popen], seconds: float = 300) -> list:
    deadline = time.time() + seconds
    while time.time() < deadline:
        found = runs(uri, query)
        if len(found) >= count:
            return found
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args[1:4]} ended with {process.returncode} before its run appeared: "
                                   f"{process.communicate()[1][-2000:]}")
        time.sleep(0.5)
    raise TimeoutError(f"fewer than {count} runs match {query!r} on {uri}")


def reap(process: subprocess.Popen | None) -> None:
    """Kill a process that is still running and close its pipes."""
    if process is None:
        return
    if process.poll() is None:
        process.kill()
    process.wait(timeout=60)
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def server_down(team: Team) -> dict:
    """A stage started while the tracking server is down."""
    uri = f"http://127.0.0.1:{servers.free_port()}"
    out = team.folder / "down" / "sst2"
    start = time.perf_counter()
    result = team.prepare(uri, out)
    return {"uri": uri, "seconds": time.perf_counter() - start, "returncode": result.returncode,
            "error": last_line(result.stderr), "files_written": sorted(str(p) for p in out.rglob("*") if p.is_file())}


def server_killed_mid_stage(team: Team, server: servers.TrackingServer) -> dict:
    """collect runs; the server is SIGKILLed; the stage fails; the server restarts on the same store; cleanup."""
    collect = team.collect(server.url)
    try:
        run = wait_for_runs(server.url, "tags.stage = 'collect' and attributes.status = 'RUNNING'", 1, [collect])[0]
        server.kill()
        killed = time.perf_counter()
        _, stderr = collect.communicate(timeout=600)
        seconds = time.perf_counter() - killed
    finally:
        reap(collect)
    server.start()
    status_after_restart = mlflow.MlflowClient(server.url).get_run(run.info.run_id).info.status
    cleanup = subprocess.run([sys.executable, "-m", "condpdiff", "runs", "cleanup"], capture_output=True, text=True,
                             env={**os.environ, "MLFLOW_TRACKING_URI": server.url}, timeout=300)
    marked = mlflow.MlflowClient(server.url).get_run(run.info.run_id)
    return {"run_id": run.info.run_id, "seconds_from_kill_to_failure": seconds, "returncode": collect.returncode,
            "error": last_line(stderr), "status_after_restart": status_after_restart,
            "cleanup_output": cleanup.stdout.strip(), "status_after_cleanup": marked.info.status,
            "failed_reason": marked.data.tags.get("failed_reason"),
            "earlier_runs_finished": len(runs(server.url, "tags.stage = 'prepare' and attributes.status = 'FINISHED'")),
            "earlier_outputs": sorted(p.name for p in team.prepared.iterdir())}


def sigkilled_stage(team: Team, server: servers.TrackingServer) -> dict:
    """collect is SIGKILLed mid-run; the next stage (prepare) on the same host marks its run."""
    collect = team.collect(server.url)
    try:
        run = wait_for_runs(server.url, "tags.stage = 'collect' and attributes.status = 'RUNNING'", 1, [collect])[0]
        collect.send_signal(signal.SIGKILL)
        collect.wait(timeout=60)
    finally:
        reap(collect)
    client = mlflow.MlflowClient(server.url)
    before = client.get_run(run.info.run_id).info.status
    start = time.perf_counter()
    next_stage = team.prepare(server.url, team.folder / "again" / "sst2")
    after = client.get_run(run.info.run_id)
    return {"run_id": run.info.run_id, "status_after_kill": before, "next_stage_returncode": next_stage.returncode,
            "next_stage_seconds": time.perf_counter() - start, "status_after_next_stage": after.info.status,
            "failed_reason": after.data.tags.get("failed_reason")}


def optuna_workers(team: Team, server: servers.TrackingServer, storage: str, study: str = "team") -> dict:
    """The study created once (`--trials 0`), then two workers (2 trials each, one thread each), one SIGKILLed
    inside a trial, and a third (1 trial) started after the grace period (3 heartbeats of 2 s), while the
    survivor still runs."""
    start = time.perf_counter()
    create = team.tune(server.url, storage, 0, study)
    _, create_err = create.communicate(timeout=600)
    if create.returncode:
        raise RuntimeError(f"creating the study failed: {create_err[-2000:]}")
    killed, survivor = team.tune(server.url, storage, 2, study), team.tune(server.url, storage, 2, study)
    late = None
    try:
        # both workers inside a trial: its MLflow run exists once the objective runs
        wait_for_runs(server.url, f"tags.optuna_study = '{study}' and attributes.status = 'RUNNING'", 2,
                      [killed, survivor])
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=60)
        time.sleep(7)  # past the grace period: the killed trial is stale for whichever worker looks next
        late = team.tune(server.url, storage, 1, study)
        _, survivor_err = survivor.communicate(timeout=900)
        _, late_err = late.communicate(timeout=900)
    finally:
        for process in (killed, survivor, late):
            reap(process)
    trials = optuna.load_study(study_name=study, storage=storage).trials
    failed = [t for t in trials if t.state.name == "FAIL"]
    retries = {t.number: t for t in trials if t.system_attrs.get("failed_trial") is not None}
    mlflow_status = {t.number: [r.info.status for r in runs(
        server.url, f"tags.optuna_study = '{study}' and tags.optuna_trial = '{t.number}'")] for t in failed}
    return {"seconds": time.perf_counter() - start, "workers": 3, "killed_worker": 1,
            "survivor_returncode": survivor.returncode, "late_returncode": late.returncode,
            "survivor_error": last_line(survivor_err) if survivor.returncode else "",
            "late_error": last_line(late_err) if late.returncode else "",
            "trials": len(trials), "states": dict(Counter(t.state.name for t in trials)),
            "failed": [t.number for t in failed],
            "retries": {str(n): {"of": t.system_attrs["failed_trial"], "state": t.state.name,
                                 "same_params": t.params == trials[t.system_attrs["failed_trial"]].params}
                        for n, t in retries.items()},
            "mlflow_status_of_failed": {str(k): v for k, v in mlflow_status.items()}}


class MlflowDefaultsDown:
    """A plain MLflow client, with MLflow's own HTTP settings, against a server that is down: started first and
    read last, since it only waits (its retries sleep) while the scenarios run."""

    def __init__(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_HTTP_REQUEST")}
        self.start = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-c", "import mlflow, time; mlflow.set_tracking_uri("
             f"'http://127.0.0.1:{servers.free_port()}'); t = time.perf_counter()\n"
             "try:\n    mlflow.search_experiments()\nfinally:\n    print(time.perf_counter() - t)"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)

    def result(self) -> dict:
        out, _ = self.process.communicate(timeout=1800)
        return {"seconds": float(out.strip().splitlines()[-1]), "returncode": self.process.returncode}


def render(result: dict) -> str:
    down, mid, killed, workers = (result[k] for k in ("server_down", "server_killed", "sigkilled_stage", "optuna"))
    defaults = result.get("mlflow_defaults_down")
    retried = ", ".join(f"#{n} ({r['state']}, same params: {r['same_params']})" for n, r in workers["retries"].items())
    rows = [
        ("Tracking server down when a stage starts",
         f"the stage exits {down['returncode']} after {down['seconds']:.1f} s (imports included), writing "
         f"{len(down['files_written'])} files: `{down['error']}`"
         + (f". A plain MLflow client with its default HTTP retries waits {defaults['seconds']:.0f} s." if defaults
            else "")),
        ("Server SIGKILLed mid-stage (collect), then restarted",
         f"the stage exits {mid['returncode']} {mid['seconds_from_kill_to_failure']:.1f} s after the kill: "
         f"`{mid['error']}`. After the restart its run is {mid['status_after_restart']}; `python -m condpdiff runs "
         f"cleanup` marks it {mid['status_after_cleanup']} (`{mid['failed_reason']}`). The earlier prepare run "
         f"({mid['earlier_runs_finished']} FINISHED) and outputs ({', '.join(mid['earlier_outputs'])}) are intact."),
        ("A stage (collect) SIGKILLed",
         f"its run stays {killed['status_after_kill']} until the next stage on that host starts "
         f"({killed['next_stage_seconds']:.1f} s, exit {killed['next_stage_returncode']}), which marks it "
         f"{killed['status_after_next_stage']} (`{killed['failed_reason']}`)."),
        ("Optuna: 2 workers on one PostgreSQL study, one SIGKILLed mid-trial, a 3rd started later",
         f"{workers['trials']} trials, states {workers['states']}; the killed trial {workers['failed']} was retried "
         f"as {retried}; "
         f"its MLflow run: {workers['mlflow_status_of_failed']}; no trial left RUNNING or WAITING "
         f"({workers['seconds']:.0f} s in all)."),
    ]
    lines = ["# Team faults on loopback (PostgreSQL 15 + `mlflow server`, tiny profile)", "",
             f"Measured {result['date']} on {result['cores']} cores; one run of each scenario.", "",
             "| fault | what the user sees |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("reports/bench"))
    parser.add_argument("--skip-mlflow-defaults", action="store_true",
                        help="do not time a plain MLflow client against a down server (it waits for minutes)")
    args = parser.parse_args()
    missing = servers.postgres_missing()
    if missing:
        parser.error(missing)
    result = {"date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count()}
    defaults = None if args.skip_mlflow_defaults else MlflowDefaultsDown()
    with tempfile.TemporaryDirectory() as folder, servers.postgres() as database:
        team = Team.create(Path(folder) / "team")
        server = servers.TrackingServer(f"{database}/mlflow", Path(folder)).start()
        try:
            prepared = team.prepare(server.url)
            if prepared.returncode:
                raise RuntimeError(prepared.stderr[-3000:])
            result["server_down"] = server_down(team)
            result["server_killed"] = server_killed_mid_stage(team, server)
            result["sigkilled_stage"] = sigkilled_stage(team, server)
            result["optuna"] = optuna_workers(team, server, f"{database}/optuna")
        finally:
            server.stop()
    if defaults is not None:
        result["mlflow_defaults_down"] = defaults.result()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "team_faults.json").write_text(json.dumps(result, indent=1))
    (args.out / "team_faults.md").write_text(render(result))
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
