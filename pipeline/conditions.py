"""Stage conditions: embed each task's condition once and cache it."""
import argparse
import json
from pathlib import Path

import mlflow
from safetensors.torch import save_file

from condpdiff.artifacts import CONDITION_TEXTS, CONDITIONS, split_file
from condpdiff.conditions import build_conditions
from condpdiff.config import load_params
from condpdiff.glue import read_jsonl
from condpdiff.tracking import stage_run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    params = load_params(args.params)
    with stage_run("conditions", params):
        tasks = params.data.tasks
        train = {t: read_jsonl(split_file(args.prepared / t, "train")) for t in tasks}
        conditions = build_conditions(params.conditions, params.base, tasks, train, params.seed)
        vectors = conditions.vectors
        args.out.mkdir(parents=True, exist_ok=True)
        # one metadata key: safetensors writes several in hash order, which changes the file's bytes from
        # run to run (and with them its md5, re-running every stage after it); the rest goes in the JSON
        save_file({"conditions": vectors.contiguous(), "bank": conditions.bank.contiguous()},
                  str(args.out / CONDITIONS), metadata={"tasks": ",".join(tasks)})
        record = {"type": params.conditions.type.value, "encoder": conditions.encoder,
                  "texts": dict(zip(tasks, conditions.texts)), "variants_per_task": conditions.bank.shape[1]}
        (args.out / CONDITION_TEXTS).write_text(json.dumps(record, indent=1, ensure_ascii=False))
        mlflow.log_dict(record, CONDITION_TEXTS)
        print("condition cosine similarity between tasks:\n", (vectors @ vectors.T).numpy().round(2))


if __name__ == "__main__":
    main()
