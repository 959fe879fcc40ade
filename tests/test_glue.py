import numpy as np
import pytest

from condpdiff.glue import TASK_SPECS, compute_metrics, headline, make_splits, read_tsv

EXPECTED = {"sst2": "accuracy", "cola": "matthews", "mrpc": "f1", "rte": "accuracy", "qnli": "accuracy",
            "stsb": "pearson"}


@pytest.mark.parametrize("task, metric", EXPECTED.items())
def test_each_task_maps_to_its_metric(task, metric):
    labels = np.array([0, 1, 1, 0, 1, 0, 2.5, 4.0][: 8 if task == "stsb" else 6], dtype=float)
    metrics = compute_metrics(task, labels.copy(), labels)
    assert TASK_SPECS[task].headline == metric
    assert headline(task, metrics) == pytest.approx(100.0)
    if task == "mrpc":
        assert "accuracy" in metrics
    if task == "stsb":
        assert "spearman" in metrics


def test_metrics_can_be_bad():
    labels = np.array([0, 1, 0, 1, 1, 0], dtype=float)
    assert compute_metrics("cola", 1 - labels, labels)["matthews"] == pytest.approx(-100.0)
    assert compute_metrics("stsb", np.ones(6), labels)["pearson"] == 0.0


@pytest.mark.parametrize("task, rows", [("sst2", 872), ("cola", 1043), ("mrpc", 408), ("rte", 277), ("qnli", 5463),
                                        ("stsb", 1500)])
def test_dev_files_parse_with_official_row_counts(glue_dir, task, rows):
    spec = TASK_SPECS[task]
    examples = read_tsv(glue_dir / spec.folder / "dev.tsv", spec)
    assert len(examples) == rows
    assert (examples[0].text_b is None) == (task in ("sst2", "cola"))


def test_splits_are_disjoint_and_qnli_is_carved_from_dev(glue_dir):
    spec = TASK_SPECS["qnli"]
    dev = read_tsv(glue_dir / "QNLI" / "dev.tsv", spec)
    splits = make_splits(None, dev, "qnli", 0, train_cap=10_000, select_size=500, eval_cap=10_000)
    assert [len(splits[s]) for s in ("train", "select", "eval")] == [3463, 500, 1500]
    texts = {s: {(e.text_a, e.text_b) for e in splits[s]} for s in splits}
    assert not texts["train"] & texts["eval"] and not texts["select"] & texts["eval"]
    sst = make_splits(read_tsv(glue_dir / "SST-2" / "train.tsv", TASK_SPECS["sst2"]), [], "sst2", 0, 100, 20, 10)
    assert len(sst["train"]) == 100 and len(sst["select"]) == 20


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="dev.tsv"):
        read_tsv(tmp_path / "dev.tsv", TASK_SPECS["rte"])
