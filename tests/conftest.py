import os
import shutil
import subprocess
from pathlib import Path

import pytest

from condpdiff.config import load_params

REPO = Path(__file__).resolve().parents[1]
TINY_PARAMS = load_params(REPO / "profiles" / "tiny.yaml")  # tests build from the params file, as stages do


@pytest.fixture(autouse=True)
def isolated_mlflow(tmp_path_factory, monkeypatch):
    """Tests never write into the repository's MLflow store, nor into a server an earlier test stopped:
    `mlflow.set_tracking_uri` and `mlflow.set_experiment` (test_registry, test_pipeline) outlive the test
    that called them, and set_experiment also writes MLFLOW_EXPERIMENT_ID into os.environ, where a later
    test's `mlflow.start_run` (or its subprocess) picks up an experiment id of another store. All reset."""
    import mlflow
    from mlflow.tracking import fluent

    def forget_experiment():
        os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
        fluent._active_experiment_id = None

    store = tmp_path_factory.getbasetemp() / "mlflow"
    store.mkdir(exist_ok=True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    forget_experiment()
    yield
    forget_experiment()


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    path = REPO / "data" / "glue"
    if not (path / "SST-2" / "dev.tsv").is_file():
        pytest.fail("data/glue is missing: run `dvc pull data/glue` (the README's set-up command does)")
    return path


def copy_repo(target: Path, glue_dir: Path, profile: str = "tiny") -> None:
    """The working tree (tracked + untracked, not ignored) as a fresh git repo, with GLUE and a profile."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        source = REPO / name
        if source.is_file() and name != "dvc.lock" and not name.startswith(("outputs/", "metrics/", "reports/")):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    shutil.copytree(glue_dir, target / "data" / "glue")
    shutil.copy(REPO / "profiles" / f"{profile}.yaml", target / "params.yaml")
    for command in (["git", "init", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"]):
        subprocess.run(command, cwd=target, check=True)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
