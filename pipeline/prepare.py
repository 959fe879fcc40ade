"""Stage prepare (one per task): GLUE TSVs -> the task's train / select / eval JSONL splits and their sizes."""
import argparse
import json
from pathlib import Path

import mlflow

from condpdiff.artifacts import SIZES, split_file
from condpdiff.config import DataSource, load_params
from condpdiff.glue import TASK_SPECS, make_splits, read_hub, read_tsv, write_jsonl
from condpdiff.tracking import stage_run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--task", required=True, choices=sorted(TASK_SPECS))
    parser.add_argument("--glue", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    params, task = load_params(args.params), args.task
    data, spec = params.data, TASK_SPECS[args.task]
    with stage_run("prepare", params, task=task):
        if data.source is DataSource.hub:
            train, dev = read_hub(spec, "train"), read_hub(spec, "validation")
        else:
            dev = read_tsv(args.glue / spec.folder / "dev.tsv", spec)
            train_file = args.glue / spec.folder / "train.tsv"
            train = read_tsv(train_file, spec) if train_file.exists() else None  # QNLI offline: dev only
        splits = make_splits(train, dev, task, params.seed, data.train_cap, data.select_size, data.eval_cap,
                             data.qnli_select, data.qnli_eval)
        for name, examples in splits.items():
            write_jsonl(split_file(args.out, name), examples)
        sizes = {**{name: len(examples) for name, examples in splits.items()}, "carved_from_dev": train is None}
        (args.out / SIZES).write_text(json.dumps(sizes, indent=1))
        mlflow.log_dict(sizes, SIZES)
        print(task, json.dumps(sizes))


if __name__ == "__main__":
    main()
