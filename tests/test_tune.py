"""Optuna tools on the tiny profile: two workers share one study; an ablation grid makes its table."""
import subprocess
import sys
from pathlib import Path

import mlflow
import optuna
import pytest

from condpdiff.config import load_params
from condpdiff.tune import TuneError, ablation_grid, open_study, run_ablation, run_tune
from conftest import copy_repo

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory, glue_dir) -> Path:
    """The tiny profile's prepared splits and corpus, made by the real `dvc repro gather`."""
    repo = tmp_path_factory.mktemp("tiny") / "repo"
    copy_repo(repo, glue_dir)
    dvc = Path(sys.executable).with_name("dvc")
    result = subprocess.run([str(dvc), "repro", "gather"], cwd=repo, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return repo


def _tune(repo: Path, storage: str, trials: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "condpdiff", "tune", "--params", "params.yaml", "--tasks", "sst2", "--steps", "4",
         "--trials", str(trials), "--storage", storage, "--study", "workers", "--out", "reports/tune_best.txt"],
        cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_workers_share_one_study(tiny_corpus, tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    creator = _tune(tiny_corpus, storage, 0)  # create the study (and its MLflow run) once, then start workers
    assert creator.wait() == 0, creator.stdout.read()
    workers = [_tune(tiny_corpus, storage, 3) for _ in range(2)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs
    study = optuna.load_study(study_name="workers", storage=storage)
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == list(range(6))  # every trial recorded exactly once
    assert all(t.state.is_finished() for t in study.trials)
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.optuna_study = 'workers'")
    trial_runs = runs[runs["tags.optuna_trial"].notna()]
    assert sorted(int(n) for n in trial_runs["tags.optuna_trial"]) == list(range(6))
    assert set(trial_runs["tags.mlflow.parentRunId"]) == {study.user_attrs["mlflow_run_id"]}
    line = (tiny_corpus / "reports" / "tune_best.txt").read_text()
    assert "dvc exp run -S lora.r=" in line and "-S collect.lr_lora=" in line


def test_study_direction_mismatch_and_bad_storage(tmp_path):
    storage = f"sqlite:///{tmp_path / 'o.db'}"
    open_study("s", storage, "maximize")
    with pytest.raises(TuneError, match="direction"):
        open_study("s", storage, "minimize")
    with pytest.raises(TuneError, match="storage"):
        open_study("s", "postgresql://nobody@127.0.0.1:1/none", "maximize")
    with pytest.raises(TuneError, match="unknown ablation"):
        ablation_grid("depth", [1], ["0-1"])
    with pytest.raises(TuneError, match="empty"):
        ablation_grid("layers", [1], [])
    params = load_params(Path(__file__).parents[1] / "profiles" / "tiny.yaml")
    with pytest.raises(TuneError, match="ranks"):
        run_tune(params, tmp_path, ["sst2"], 1, 4, storage, "s", tmp_path / "best.txt", ranks=[3])
    with pytest.raises(TuneError, match="heartbeat"):
        run_tune(params, tmp_path, ["sst2"], 1, 4, storage, "s", tmp_path / "best.txt", heartbeat=0)


def _rows(path: Path) -> dict[str, str]:
    return {line.split(" | ")[0].strip("| "): line for line in path.read_text().splitlines()
            if line.startswith("| ") and "COMPLETE" in line}


def test_ablate_norm_makes_a_three_row_table(tiny_corpus, tmp_path):
    params = load_params(tiny_corpus / "params.yaml")
    prepared, corpus, storage = tiny_corpus / "outputs" / "prepared", tiny_corpus / "outputs" / "corpus", \
        f"sqlite:///{tmp_path / 'a.db'}"
    cache = tmp_path / "cache"
    path = run_ablation("norm", params, ablation_grid("norm", [1], []), prepared, corpus, storage, tmp_path,
                        tasks=["sst2", "stsb"], cache=cache)
    rows = _rows(path)
    assert set(rows) == {"none", "batch", "task"} and not any("cached" in r for r in rows.values())
    assert (tmp_path / "ablation_norm.csv").is_file()
    # another grid's default row (every layer = the norm grid's `task` row) is reused, not recomputed
    path = run_ablation("layers", params, ["0-5"], prepared, corpus, storage, tmp_path, tasks=["sst2", "stsb"],
                        cache=cache)
    task_cells, reused_cells = rows["task"].split(" | "), _rows(path)["0-5"].split(" | ")
    assert "(cached)" in reused_cells[2] and reused_cells[3:5] == task_cells[3:5]


def test_bad_ablation_input_fails_before_any_row(tiny_corpus, tmp_path):
    params = load_params(tiny_corpus / "params.yaml")
    prepared, corpus = tiny_corpus / "outputs" / "prepared", tiny_corpus / "outputs" / "corpus"
    storage = f"sqlite:///{tmp_path / 'bad.db'}"
    cases = [("n", [1, 99], corpus, "outside 1..4"), ("layers", ["4-0"], corpus, "layers must look like"),
             ("norm", ["task"], tmp_path / "nowhere", "dvc repro gather")]
    for name, grid, where, message in cases:
        with pytest.raises(ValueError, match=message):
            run_ablation(name, params, grid, prepared, where, storage, tmp_path, tasks=["sst2", "stsb"])
    with pytest.raises(TuneError, match="not in the corpus"):
        run_ablation("norm", params, ["task"], prepared, corpus, storage, tmp_path, tasks=["mrpc"])
    assert optuna.get_all_study_summaries(storage) == []  # no study was opened, no row ran


def test_equal_variants_share_cache_keys(tiny_corpus):
    from condpdiff.ablation import Variant, _keys

    params = load_params(tiny_corpus / "params.yaml")

    def keys(**change):
        return _keys(params, Variant(**change), ["sst2", "stsb"], tiny_corpus / "outputs" / "prepared",
                     tiny_corpus / "outputs" / "corpus")

    default = keys()
    assert keys(layers="0-5") == keys(n=params.collect.keep_last) == keys(norm="task") == default
    assert keys(condition="text_fewshot") == default
    onehot = keys(condition="onehot")
    assert onehot[0] == default[0] and onehot[1] != default[1]  # same autoencoder, another row
    for other in (keys(n=1), keys(layers="0-1"), keys(norm="batch")):
        assert other[0] != default[0] and other[1] != default[1]


def test_layer_subset_variant_runs(tiny_corpus, tmp_path):
    from condpdiff.ablation import Variant, run_variant

    params = load_params(tiny_corpus / "params.yaml")
    results = run_variant(params, Variant(layers="0-1", n=2), ["sst2"], tiny_corpus / "outputs" / "prepared",
                          tiny_corpus / "outputs" / "corpus", score_eval=False)
    assert set(results["sst2"]) == {"select_best", "select_mean"}
    with pytest.raises(ValueError, match="n=99"):
        run_variant(params, Variant(n=99), ["sst2"], tiny_corpus / "outputs" / "prepared",
                    tiny_corpus / "outputs" / "corpus")
