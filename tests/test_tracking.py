"""MLflow glue: the store resolves to the main repo, and a failing stage leaves its run FAILED."""

import os

import mlflow
import pytest

from condpdiff.config import flatten_dict, params_to_dict
from condpdiff.tracking import (PROCESS_TAG, fail_abandoned_runs, process_identity, repo_root, setup_experiment,
                                stage_run, tracking_uri)
from conftest import REPO, TINY_PARAMS


def test_repo_root_from_inside_a_dvc_temp_experiment(tmp_path):
    (tmp_path / ".dvc").mkdir()
    inner = tmp_path / ".dvc" / "tmp" / "exps" / "tmpabc123" / "pipeline"
    inner.mkdir(parents=True)
    assert repo_root(inner) == tmp_path
    assert repo_root(tmp_path) == tmp_path


def test_default_store_is_sqlite_in_the_repo(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    (tmp_path / ".dvc").mkdir()
    monkeypatch.chdir(tmp_path)
    assert tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlruns' / 'mlflow.db'}"


def test_failing_stage_is_marked_failed_and_tagged():
    with pytest.raises(RuntimeError, match="boom"):
        with stage_run("unit-test-stage", TINY_PARAMS, task="sst2") as run:
            run_id = run.info.run_id
            raise RuntimeError("boom")
    finished = mlflow.get_run(run_id)
    assert finished.info.status == "FAILED"
    assert finished.data.tags["stage"] == "unit-test-stage" and finished.data.tags["task"] == "sst2"
    assert {"git_commit", "dvc_experiment", "pipeline_id"} <= set(finished.data.tags)


def test_every_stage_run_carries_the_whole_params_file():
    """The compare view shows the cause beside the metric: a generate param is on the evaluate run too."""
    with stage_run("evaluate", TINY_PARAMS) as run:
        run_id = run.info.run_id
    logged = mlflow.get_run(run_id).data.params
    expected = {k: str(v) for k, v in flatten_dict(params_to_dict(TINY_PARAMS)).items()}
    assert logged == expected
    assert logged["generate.sampler"] == "ddim" and logged["norm"] == "cond"


def test_killed_stage_is_marked_failed(tmp_path):
    """SIGTERM (an interrupted `dvc repro`, a killed job) still leaves the run FAILED."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = ("import time\nfrom condpdiff.config import load_params\nfrom condpdiff.tracking import stage_run\n"
              f"with stage_run('killed-stage', load_params({str(REPO / 'profiles' / 'tiny.yaml')!r})) as run:\n"
              "    print(run.info.run_id, flush=True)\n    time.sleep(60)\n")
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=os.environ)
    run_id = process.stdout.readline().strip()
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 128 + signal.SIGTERM
    assert mlflow.get_run(run_id).info.status == "FAILED"


def test_a_run_of_a_dead_process_on_another_host_is_left_alone_unless_old():
    experiment = setup_experiment("abandoned-runs")
    client = mlflow.MlflowClient()
    elsewhere = client.create_run(experiment, tags={PROCESS_TAG: "other-host:abcd:1:1"}).info.run_id
    dead = client.create_run(experiment, tags={PROCESS_TAG: process_identity(os.getpid())[:-1] + "x"}).info.run_id
    alive = client.create_run(experiment, tags={PROCESS_TAG: process_identity()}).info.run_id
    assert fail_abandoned_runs(client, experiment) == [dead]
    assert client.get_run(elsewhere).info.status == client.get_run(alive).info.status == "RUNNING"
    assert fail_abandoned_runs(client, experiment, older_than_hours=0.0) == [elsewhere]
    assert client.get_run(alive).info.status == "RUNNING"


def test_an_experiment_another_process_creates_between_look_and_create_is_joined(monkeypatch):
    """Two queued experiments start their first stage at once against one server: both must land in one experiment."""
    looked = mlflow.get_experiment_by_name
    calls = []

    def look_then_lose_the_race(name):
        calls.append(name)
        if len(calls) == 1:
            mlflow.MlflowClient().create_experiment(name)  # the other worker wins between our look and our create
            return None
        return looked(name)

    monkeypatch.setattr(mlflow, "get_experiment_by_name", look_then_lose_the_race)
    experiment_id = setup_experiment("raced")
    assert experiment_id == looked("raced").experiment_id and len(calls) == 2
