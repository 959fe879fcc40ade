"""Team scale on loopback, with a real PostgreSQL 15 started and stopped here: the tracking server on it,
Optuna workers sharing a study on it, basic-auth, and the faults each must survive (README, Running as a team).

PostgreSQL refuses to run as root, so as root it runs as the `postgres` user (`runuser`) in a folder that
user owns; pytest's temp folders are mode 0700 under root's and would lock it out."""
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml

from condpdiff import servers
from condpdiff.registry import MODEL_NAME, promote
from conftest import REPO

PG_BIN = Path("/usr/lib/postgresql/15/bin")
ROOT = os.geteuid() == 0
pytestmark = pytest.mark.slow


def _as_postgres(command: list) -> list[str]:
    return (["runuser", "-u", "postgres", "--"] if ROOT else []) + [str(part) for part in command]


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server on a free loopback port with the databases `mlflow` and `optuna`; its URL."""
    if not (PG_BIN / "pg_ctl").is_file():
        pytest.skip(f"PostgreSQL 15 is not installed ({PG_BIN}): the team tests need a real server")
    if ROOT and (shutil.which("runuser") is None or _missing_user("postgres")):
        pytest.skip("running as root without `runuser` or a `postgres` user: PostgreSQL refuses to run as root")
    import psycopg

    folder = Path(tempfile.mkdtemp(prefix="condpdiff-pg-"))
    if ROOT:
        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
    port = servers.free_port()
    subprocess.run(_as_postgres([PG_BIN / "initdb", "-D", folder / "data", "-A", "trust", "-U", "postgres",
                                 "-E", "UTF8", "--no-sync"]), check=True, capture_output=True)
    subprocess.run(_as_postgres([PG_BIN / "pg_ctl", "-D", folder / "data", "-l", folder / "postgres.log", "-w", "-o",
                                 f"-h 127.0.0.1 -p {port} -k {folder} -F", "start"]), check=True, capture_output=True)
    try:
        with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres",
                             autocommit=True) as connection:
            for database in ("mlflow", "optuna"):
                connection.execute(f"CREATE DATABASE {database}")
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(_as_postgres([PG_BIN / "pg_ctl", "-D", folder / "data", "-m", "immediate", "stop"]),
                       capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def _missing_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return False
    except KeyError:
        return True


class TrackingServer:
    """`mlflow server` on the PostgreSQL store with proxied artifacts; it can be killed and started again."""

    def __init__(self, store: str, folder: Path, extra: tuple[str, ...] = (), env: dict | None = None):
        self.store, self.folder, self.extra, self.env = store, folder, extra, env
        self.port = servers.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = None

    def start(self) -> None:
        self.process = servers.start(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", self.store, "--artifacts-destination", str(self.folder / "artifacts"),
             "--workers", "1", *self.extra], self.folder / "server.log", url=f"{self.url}/health", env=self.env,
            seconds=180)

    def kill(self) -> None:
        servers.stop(self.process, signal.SIGKILL)


@pytest.fixture(scope="module")
def tracking_server(postgres, tmp_path_factory):
    server = TrackingServer(f"{postgres}/mlflow", tmp_path_factory.mktemp("tracking"))
    server.start()
    try:
        yield server
    finally:
        servers.stop(server.process)


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    """A working folder with the tiny params (collect made long enough to be killed mid-stage)."""
    folder = tmp_path_factory.mktemp("team")
    params = yaml.safe_load((REPO / "profiles" / "tiny.yaml").read_text())
    params["collect"]["steps"] = 300
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    return folder


def _stage(team: Path, uri: str, *arguments: str, wait: bool = True):
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "TQDM_DISABLE": "1", "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, *arguments, "--params", str(team / "params.yaml")]
    if wait:
        return subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _prepare(team: Path, uri: str, out: str = "prepared"):
    return _stage(team, uri, "pipeline/prepare.py", "--task", "sst2", "--glue", str(REPO / "data" / "glue"),
                  "--out", str(team / out / "sst2"))


def _collect(team: Path, uri: str):
    return _stage(team, uri, "pipeline/collect.py", "--task", "sst2", "--prepared", str(team / "prepared" / "sst2"),
                  "--out", str(team / "collect"), wait=False)


def _runs(uri: str, query: str) -> list:
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("condpdiff")
    return client.search_runs([experiment.experiment_id], query) if experiment else []


def _wait_for_running(uri: str, stage: str, process: subprocess.Popen, seconds: float = 180):
    deadline = time.time() + seconds
    while time.time() < deadline:
        runs = _runs(uri, f"tags.stage = '{stage}' and attributes.status = 'RUNNING'")
        if runs:
            return runs[0]
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(1)
    raise TimeoutError(f"no RUNNING {stage} run on {uri}")


@pytest.fixture(scope="module")
def prepared(team, tracking_server, glue_dir):
    result = _prepare(team, tracking_server.url)
    assert result.returncode == 0, result.stderr[-3000:]
    return team / "prepared" / "sst2"


def test_a_stage_logs_to_the_server_on_postgresql_with_proxied_artifacts(tracking_server, prepared):
    runs = _runs(tracking_server.url, "tags.stage = 'prepare' and attributes.status = 'FINISHED'")
    assert len(runs) == 1 and runs[0].data.params["data.train_cap"] == "200"
    mlflow.set_tracking_uri(tracking_server.url)
    with mlflow.start_run(run_id=runs[0].info.run_id):
        mlflow.log_text("proxied", "check/note.txt")  # through the server, into --artifacts-destination
    assert [p.read_text() for p in (tracking_server.folder / "artifacts").rglob("note.txt")] == ["proxied"]


def test_a_server_that_is_down_fails_the_stage_at_once_naming_it(team, tmp_path):
    uri = f"http://127.0.0.1:{servers.free_port()}"
    result = _prepare(team, uri, out=str(tmp_path / "down"))
    assert result.returncode != 0
    assert f"the MLflow tracking server {uri} does not answer" in result.stderr
    assert not list((tmp_path / "down").rglob("*.jsonl"))  # nothing written


def test_a_server_killed_mid_stage_fails_it_clearly_and_its_run_is_marked_after_a_restart(team, tracking_server,
                                                                                             prepared):
    collect = _collect(team, tracking_server.url)
    try:
        run = _wait_for_running(tracking_server.url, "collect", collect)
        tracking_server.kill()
        _, stderr = collect.communicate(timeout=300)
    finally:
        collect.kill()
    assert collect.returncode != 0
    assert f"stage collect: the MLflow tracking server {tracking_server.url} does not answer" in stderr, stderr[-3000:]
    tracking_server.start()  # the same store: nothing already produced is lost
    client = mlflow.MlflowClient(tracking_server.url)
    assert client.get_run(run.info.run_id).info.status == "RUNNING"  # the server was gone when it failed
    assert _runs(tracking_server.url, "tags.stage = 'prepare' and attributes.status = 'FINISHED'")
    assert (prepared / "select.jsonl").is_file() or list(prepared.glob("*select*"))
    cleanup = subprocess.run([sys.executable, "-m", "condpdiff", "runs", "cleanup"], capture_output=True, text=True,
                             env={**os.environ, "MLFLOW_TRACKING_URI": tracking_server.url}, timeout=120)
    assert cleanup.returncode == 0 and run.info.run_id in cleanup.stdout, cleanup.stderr[-2000:]
    marked = client.get_run(run.info.run_id)
    assert marked.info.status == "FAILED" and "process ended" in marked.data.tags["failed_reason"]


def test_a_sigkilled_stage_is_marked_failed_by_the_next_stage(team, tracking_server, prepared, tmp_path):
    collect = _collect(team, tracking_server.url)
    try:
        run = _wait_for_running(tracking_server.url, "collect", collect)
        collect.send_signal(signal.SIGKILL)
        collect.wait(timeout=60)
    finally:
        collect.kill()
    client = mlflow.MlflowClient(tracking_server.url)
    assert client.get_run(run.info.run_id).info.status == "RUNNING"
    assert _prepare(team, tracking_server.url, out=str(tmp_path / "again")).returncode == 0  # the next stage
    assert client.get_run(run.info.run_id).info.status == "FAILED"


def test_optuna_workers_share_a_postgresql_study_and_a_sigkilled_worker_leaves_no_trial_running(
        postgres, tracking_server, team, prepared):
    """Two workers (one thread each), one killed mid-trial; a third starts after the grace period. On 2 cores
    this proves bookkeeping, not speed."""
    storage = f"{postgres}/optuna"

    def worker(trials: int) -> subprocess.Popen:
        return _stage(team, tracking_server.url, "-m", "condpdiff", "tune", "--prepared", str(team / "prepared"),
                      "--tasks", "sst2", "--trials", str(trials), "--steps", "150", "--ranks", "1", "--threads", "1",
                      "--heartbeat", "1", "--storage", storage, "--study", "team", "--out", str(team / "best.txt"),
                      wait=False)

    killed, survivor = worker(2), worker(2)
    try:
        deadline = time.time() + 300
        # both workers inside a trial: its MLflow run exists once the objective runs
        while len(_runs(tracking_server.url, "tags.optuna_study = 'team' and attributes.status = 'RUNNING'")) < 2:
            assert time.time() < deadline and killed.poll() is None, killed.communicate()[1][-3000:]
            time.sleep(0.5)
        killed.send_signal(signal.SIGKILL)
        _, stderr = survivor.communicate(timeout=600)
        assert survivor.returncode == 0, stderr[-3000:]
        time.sleep(4)  # past the grace period (3 heartbeats of 1 s)
        late = worker(1)
        _, stderr = late.communicate(timeout=600)
        assert late.returncode == 0, stderr[-3000:]
    finally:
        for process in (killed, survivor):
            process.kill()
    trials = optuna.load_study(study_name="team", storage=storage).trials
    states = [t.state.name for t in trials]
    assert "RUNNING" not in states and "WAITING" not in states, states
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert len(failed) == 1, states
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == failed[0].number]
    assert len(retries) == 1 and retries[0].state.name in ("COMPLETE", "PRUNED")
    assert retries[0].params == failed[0].params
    runs = _runs(tracking_server.url, f"tags.optuna_study = 'team' and tags.optuna_trial = '{failed[0].number}'")
    assert [r.info.status for r in runs] == ["FAILED"]


def test_basic_auth_lets_a_user_with_rights_move_champion_and_no_one_else(tmp_path, monkeypatch):
    """`mlflow server --app-name basic-auth`: anonymous calls get 401; alice (default READ) cannot move
    @champion; bob, granted MANAGE on the model, can."""
    from mlflow.server.auth.client import AuthServiceClient

    config = tmp_path / "basic_auth.ini"
    config.write_text("[mlflow]\ndefault_permission = READ\n"
                      f"database_uri = sqlite:///{tmp_path / 'auth.db'}\nadmin_username = admin\n"
                      "admin_password = admin-secret-1234\n"
                      "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    server = TrackingServer(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path, ("--app-name", "basic-auth"),
                            env={**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(config),
                                 "MLFLOW_FLASK_SERVER_SECRET_KEY": "team-test-key"})
    server.start()
    try:
        import urllib.error
        import urllib.request

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
        servers.stop(server.process)

