"""Stage report: the Table-1-style Markdown report."""
import argparse
import json
from pathlib import Path

import mlflow

from condpdiff.artifacts import SIZES
from condpdiff.config import load_params
from condpdiff.report import render_table1
from condpdiff.tracking import stage_run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--scores", type=Path, required=True)
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    params = load_params(args.params)
    with stage_run("report", params):
        results = json.loads(args.scores.read_text())
        sizes = {task: json.loads((args.prepared / task / SIZES).read_text()) for task in params.data.tasks}
        text = render_table1(results, sizes, params.norm.value, params.conditions.type.value)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        mlflow.log_artifact(str(args.out))
        print(text)


if __name__ == "__main__":
    main()
