"""Stage gather: the per-task corpora into one corpus folder, with the common padded length.

Writes `<task>.safetensors` (the task's checkpoints), `layout.json` (every layout, the padded
length all tasks share, num_labels) and `originals.json`; the stages after it read only this.
"""
import argparse
import json
import shutil
from pathlib import Path

import mlflow

from condpdiff.artifacts import CHECKPOINTS, LAYOUTS, ORIGINAL, ORIGINALS, TASK_LAYOUT, task_corpus_file
from condpdiff.config import load_params
from condpdiff.corpus import load_task_corpus
from condpdiff.lora import read_layouts, save_layouts
from condpdiff.tracking import stage_run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--collected", type=Path, required=True, help="the folder of per-task collect outputs")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    params = load_params(args.params)
    tasks = params.groups
    with stage_run("gather", params):
        layouts, num_labels, originals = {}, {}, {}
        for task in tasks:
            folder = args.collected / task
            load_task_corpus(folder / CHECKPOINTS)  # missing, corrupt or non-finite: an error naming the file
            task_layouts, _, task_labels = read_layouts(folder / TASK_LAYOUT)
            layouts[task], num_labels[task] = task_layouts[task], task_labels[task]
            originals[task] = json.loads((folder / ORIGINAL).read_text())
        args.out.mkdir(parents=True, exist_ok=True)
        for task in tasks:
            shutil.copyfile(args.collected / task / CHECKPOINTS, task_corpus_file(args.out, task))
        save_layouts(args.out / LAYOUTS, layouts, max(layout.length for layout in layouts.values()), num_labels)
        (args.out / ORIGINALS).write_text(json.dumps(originals, indent=1))
        mlflow.log_artifact(str(args.out / ORIGINALS))
        print(f"gathered {len(tasks)} tasks into {args.out}")


if __name__ == "__main__":
    main()
