"""Team scale on loopback, with a real PostgreSQL 15 started and stopped here: the tracking server on it,
Optuna workers sharing a study on it, basic-auth, and the faults each must survive (README, Running as a
team). The fault scenarios are those of `benchmarks/team_faults.py`; here their outcomes are asserted."""
import os
import sys
import urllib.error
import urllib.request

import mlflow
import pytest

from condpdiff import servers
from condpdiff.registry import MODEL_NAME, promote
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import team_faults  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def postgres():
    missing = servers.postgres_missing()
    if missing:
        pytest.skip(f"{missing}: the team tests need a real PostgreSQL server")
    with servers.postgres() as url:
        yield url


@pytest.fixture(scope="module")
def tracking_server(postgres, tmp_path_factory):
    server = servers.TrackingServer(f"{postgres}/mlflow", tmp_path_factory.mktemp("tracking")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def team(tracking_server, tmp_path_factory, glue_dir) -> team_faults.Team:
    """The tiny params (collect long enough to be killed mid-stage) and sst2 prepared through the server. One
    HTTP retry instead of the project's four: the outcome is the same, sooner (the benchmark times the four)."""
    team = team_faults.Team.create(tmp_path_factory.mktemp("team"), env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"})
    result = team.prepare(tracking_server.url)
    assert result.returncode == 0, result.stderr[-3000:]
    return team


def test_a_stage_logs_to_the_server_on_postgresql_with_proxied_artifacts(tracking_server, team):
    runs = team_faults.runs(tracking_server.url, "tags.stage = 'prepare' and attributes.status = 'FINISHED'")
    assert len(runs) == 1 and runs[0].data.params["data.train_cap"] == "200"
    mlflow.set_tracking_uri(tracking_server.url)
    with mlflow.start_run(run_id=runs[0].info.run_id):
        mlflow.log_text("proxied", "check/note.txt")  # through the server, into --artifacts-destination
    assert [p.read_text() for p in (tracking_server.folder / "artifacts").rglob("note.txt")] == ["proxied"]


def test_a_server_that_is_down_fails_the_stage_at_once_naming_it(team):
    result = team_faults.server_down(team)
    assert result["returncode"] != 0 and not result["files_written"]
    assert f"the MLflow tracking server {result['uri']} does not answer" in result["error"]


def test_a_server_killed_mid_stage_fails_it_clearly_and_its_run_is_marked_after_a_restart(team, tracking_server):
    result = team_faults.server_killed_mid_stage(team, tracking_server)
    assert result["returncode"] != 0
    assert f"stage collect: the MLflow tracking server {tracking_server.url} does not answer" in result["error"]
    assert result["status_after_restart"] == "RUNNING"  # the server was gone when the stage failed
    assert result["run_id"] in result["cleanup_output"] and result["status_after_cleanup"] == "FAILED"
    assert "process ended" in result["failed_reason"]
    assert result["earlier_runs_finished"] >= 1 and "select.jsonl" in result["earlier_outputs"]


def test_a_sigkilled_stage_is_marked_failed_by_the_next_stage(team, tracking_server):
    result = team_faults.sigkilled_stage(team, tracking_server)
    assert result["status_after_kill"] == "RUNNING" and result["next_stage_returncode"] == 0
    assert result["status_after_next_stage"] == "FAILED"


def test_optuna_workers_share_a_postgresql_study_and_a_sigkilled_worker_leaves_no_trial_running(
        postgres, tracking_server, team):
    result = team_faults.optuna_workers(team, tracking_server, f"{postgres}/optuna")
    assert result["survivor_returncode"] == result["late_returncode"] == 0, result
    assert "RUNNING" not in result["states"] and "WAITING" not in result["states"], result["states"]
    assert len(result["failed"]) == 1 and result["states"]["FAIL"] == 1
    retry = [r for r in result["retries"].values() if r["of"] == result["failed"][0]]
    assert len(retry) == 1 and retry[0]["state"] in ("COMPLETE", "PRUNED") and retry[0]["same_params"]
    assert result["mlflow_status_of_failed"] == {str(result["failed"][0]): ["FAILED"]}


def test_basic_auth_lets_a_user_with_rights_move_champion_and_no_one_else(tmp_path, monkeypatch):
    """`mlflow server --app-name basic-auth`: anonymous calls get 401; alice (default READ) cannot move
    @champion; bob, granted MANAGE on the model, can."""
    from mlflow.server.auth.client import AuthServiceClient

    config = tmp_path / "basic_auth.ini"
    config.write_text("[mlflow]\ndefault_permission = READ\n"
                      f"database_uri = sqlite:///{tmp_path / 'auth.db'}\nadmin_username = admin\n"
                      "admin_password = admin-secret-1234\n"
                      "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                      "auth_cache_ttl_seconds = 60\n")
    server = servers.TrackingServer(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path, ("--app-name", "basic-auth"),
                                    env={**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(config),
                                         "MLFLOW_FLASK_SERVER_SECRET_KEY": "team-test-key"}).start()
    try:
        with pytest.raises(urllib.error.HTTPError) as anonymous:
            urllib.request.urlopen(f"{server.url}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10)
        assert anonymous.value.code == 401
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "admin-secret-1234")
        mlflow.set_tracking_uri(server.url)
        users = AuthServiceClient(server.url)
        users.create_user("alice", "alice-secret-1234")
        users.create_user("bob", "bob-secret-12345")
        client = mlflow.MlflowClient(server.url)
        client.create_registered_model(MODEL_NAME)
        with mlflow.start_run() as run:
            mlflow.log_text("stand-in", "generator/MLmodel")
        versions = [client.create_model_version(MODEL_NAME, f"runs:/{run.info.run_id}/generator", run.info.run_id)
                    for _ in range(2)]
        for version, score in zip(versions, ("70.0", "80.0")):
            client.set_model_version_tag(MODEL_NAME, version.version, "select_average_generated_best", score)
        promote(versions[0].version)
        users.grant_user_permission("bob", "registered_model", MODEL_NAME, "MANAGE")
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "alice-secret-1234")
        with pytest.raises(mlflow.exceptions.MlflowException, match="Permission denied|PERMISSION_DENIED"):
            promote(versions[1].version)
        assert client.get_model_version_by_alias(MODEL_NAME, "champion").version == versions[0].version
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "bob")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "bob-secret-12345")
        assert promote(versions[1].version) == versions[1].version
        assert client.get_model_version_by_alias(MODEL_NAME, "champion").version == versions[1].version
    finally:
        server.stop()

