"""GLUE tasks: file formats, metrics and the train / select / eval splits.

`select` is carved from the training data and is the only split any choice is made on;
`eval` is the official dev set and is only ever reported.
"""
from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef


@dataclass(frozen=True)
class Example:
    text_a: str
    text_b: str | None
    label: float


@dataclass(frozen=True)
class TaskSpec:
    name: str
    folder: str  # folder in the download_glue_data.py layout
    num_labels: int  # 1 = regression
    headline: str  # the metric reported in the table
    hub_name: str  # `datasets.load_dataset("glue", hub_name)`
    parse_row: Callable[[list[str]], Example]
    has_header: bool = True
    ncols: int = 0


def _label(mapping: dict[str, int]) -> Callable[[str], int]:
    return lambda value: mapping[value]


_RTE_QNLI = _label({"entailment": 0, "not_entailment": 1})

TASK_SPECS: dict[str, TaskSpec] = {
    "sst2": TaskSpec("sst2", "SST-2", 2, "accuracy", "sst2",
                     lambda r: Example(r[0].strip(), None, int(r[1])), ncols=2),
    "cola": TaskSpec("cola", "CoLA", 2, "matthews", "cola",
                     lambda r: Example(r[3], None, int(r[1])), has_header=False, ncols=4),
    "mrpc": TaskSpec("mrpc", "MRPC", 2, "f1", "mrpc",
                     lambda r: Example(r[3], r[4], int(r[0])), ncols=5),
    "rte": TaskSpec("rte", "RTE", 2, "accuracy", "rte",
                    lambda r: Example(r[1], r[2], _RTE_QNLI(r[3])), ncols=4),
    "qnli": TaskSpec("qnli", "QNLI", 2, "accuracy", "qnli",
                     lambda r: Example(r[1], r[2], _RTE_QNLI(r[3])), ncols=4),
    "stsb": TaskSpec("stsb", "STS-B", 1, "pearson", "stsb",
                     lambda r: Example(r[7], r[8], float(r[9])), ncols=10),
}


def read_tsv(path: Path, spec: TaskSpec) -> list[Example]:
    if not path.is_file():
        raise FileNotFoundError(f"{spec.name}: GLUE file missing: {path} (run `dvc pull data/glue`)")
    with open(path, encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    if spec.has_header:
        rows = rows[1:]
    examples = []
    for line_number, row in enumerate(rows, start=2 if spec.has_header else 1):
        if len(row) != spec.ncols:
            raise ValueError(f"{path}:{line_number}: expected {spec.ncols} columns, got {len(row)}")
        examples.append(spec.parse_row(row))
    return examples


def read_hub(spec: TaskSpec, split: str) -> list[Example]:
    """GLUE from the Hugging Face hub, for users who are online (needs `datasets`)."""
    try:
        import datasets
    except ImportError as error:
        raise ImportError("data.source=hub needs the `datasets` package: pip install datasets") from error
    table = datasets.load_dataset("glue", spec.hub_name, split=split)
    columns = [c for c in table.column_names if c not in ("label", "idx")]
    return [
        Example(row[columns[0]], row[columns[1]] if len(columns) > 1 else None, row["label"])
        for row in table
    ]


def make_splits(
    train: list[Example] | None,
    dev: list[Example],
    task: str,
    seed: int,
    train_cap: int,
    select_size: int,
    eval_cap: int,
    qnli_select: int = 500,
    qnli_eval: int = 1500,
) -> dict[str, list[Example]]:
    """train (capped) / select (carved from train) / eval (official dev, capped).

    Without a train file (QNLI offline) the dev set is carved into all three.
    """
    rng = random.Random(f"{seed}-{task}")
    dev = list(dev)
    if train is None:
        rng.shuffle(dev)
        eval_part, select_part, train = dev[:qnli_eval], dev[qnli_eval:qnli_eval + qnli_select], dev[qnli_eval + qnli_select:]
        dev = eval_part
        rng.shuffle(train)
    else:
        train = list(train)
        rng.shuffle(train)
        select_part, train = train[:select_size], train[select_size:]
    if eval_cap and len(dev) > eval_cap:
        dev = rng.sample(dev, eval_cap)
    return {"train": train[:train_cap], "select": select_part[:select_size], "eval": dev}


def write_jsonl(path: Path, examples: list[Example]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for example in examples:
            handle.write(json.dumps(example.__dict__, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[Example]:
    if not path.is_file():
        raise FileNotFoundError(f"prepared split missing: {path}")
    with open(path, encoding="utf-8") as handle:
        return [Example(**json.loads(line)) for line in handle if line.strip()]


def compute_metrics(task: str, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """All metrics of a task, x100. `predictions`: class ids, or scores for STS-B."""
    spec = TASK_SPECS[task]
    if spec.num_labels == 1:
        if np.std(predictions) == 0:
            return {"pearson": 0.0, "spearman": 0.0}
        return {
            "pearson": 100 * float(pearsonr(predictions, labels)[0]),
            "spearman": 100 * float(spearmanr(predictions, labels)[0]),
        }
    metrics = {"accuracy": 100 * float(np.mean(predictions == labels))}
    if task == "mrpc":
        metrics["f1"] = 100 * float(f1_score(labels, predictions))
    if task == "cola":
        metrics["matthews"] = 100 * float(matthews_corrcoef(labels, predictions))
    return metrics


def headline(task: str, metrics: dict[str, float]) -> float:
    return metrics[TASK_SPECS[task].headline]
