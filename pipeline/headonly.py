"""Stage headonly (one per task): the classification head trained alone on the frozen base, LoRA off,
with collect's steps, batch size, head rate and schedule. The floor a LoRA must clear; evaluate scores
it beside the original and the generated adapters."""
import argparse
from pathlib import Path

import torch
from safetensors.torch import save_file

from condpdiff.artifacts import split_file
from condpdiff.baselines import HEAD_ONLY, head_only
from condpdiff.config import load_params
from condpdiff.evaluation import task_scorer
from condpdiff.glue import TASK_SPECS, read_jsonl
from condpdiff.lora import flatten_model
from condpdiff.tracking import stage_run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--task", required=True, choices=sorted(TASK_SPECS))
    parser.add_argument("--prepared", type=Path, required=True, help="this task's prepared splits")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    params, task = load_params(args.params), args.task
    torch.set_flush_denormal(True)
    with stage_run("headonly", params, task=task):
        train = read_jsonl(split_file(args.prepared, "train"))
        scorer = task_scorer(params.base, params.lora, task, params.evaluate.batch_size, params.seed)
        vector = head_only(params, scorer, train, flatten_model(scorer.model, scorer.layout))
        args.out.mkdir(parents=True, exist_ok=True)
        save_file({"head_only": vector}, str(args.out / HEAD_ONLY), metadata={"task": task})
        print(f"{task}: head-only vector ({scorer.layout.length} entries, LoRA zero) written to {args.out}")


if __name__ == "__main__":
    main()
