"""MLflow glue: the store resolves to the main repo, and a failing stage leaves its run FAILED."""

import mlflow
import pytest

from condpdiff.config import Params
from condpdiff.tracking import nested_run, repo_root, stage_run, tracking_uri


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
        with stage_run("unit-test-stage", Params(), ("norm",)) as run:
            run_id = run.info.run_id
            raise RuntimeError("boom")
    finished = mlflow.get_run(run_id)
    assert finished.info.status == "FAILED"
    assert finished.data.tags["stage"] == "unit-test-stage"
    assert {"git_commit", "dvc_experiment", "pipeline_id"} <= set(finished.data.tags)
    assert finished.data.params["norm"] == "task"
    with stage_run("unit-test-ok", Params(), ("norm",)) as run:
        ok_id = run.info.run_id
        with pytest.raises(ValueError):
            with nested_run("inner", task="sst2") as inner:
                inner_id = inner.info.run_id
                raise ValueError("inner failure")
        assert mlflow.active_run().info.run_id == ok_id  # the stage run goes on
    assert mlflow.get_run(ok_id).info.status == "FINISHED"
    child = mlflow.get_run(inner_id)
    assert child.info.status == "FAILED" and child.data.tags["mlflow.parentRunId"] == ok_id
    assert child.info.experiment_id == mlflow.get_run(ok_id).info.experiment_id


def test_killed_stage_is_marked_failed(tmp_path):
    """SIGTERM (an interrupted `dvc repro`, a killed job) still leaves the run FAILED."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = ("import time\nfrom condpdiff.config import Params\nfrom condpdiff.tracking import stage_run\n"
              "with stage_run('killed-stage', Params(), ('norm',)) as run:\n"
              "    print(run.info.run_id, flush=True)\n    time.sleep(60)\n")
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=os.environ)
    run_id = process.stdout.readline().strip()
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 128 + signal.SIGTERM
    assert mlflow.get_run(run_id).info.status == "FAILED"
