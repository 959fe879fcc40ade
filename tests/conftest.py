import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def isolated_mlflow(tmp_path_factory, monkeypatch):
    """Tests never write into the repository's MLflow store."""
    store = tmp_path_factory.getbasetemp() / "mlflow"
    store.mkdir(exist_ok=True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
    yield


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    path = REPO / "data" / "glue"
    if not (path / "SST-2" / "dev.tsv").is_file():
        pytest.fail("data/glue is missing: run `dvc pull data/glue` (the README's set-up command does)")
    return path


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
