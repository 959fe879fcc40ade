"""Stage collect (one per task): LoRA-fine-tune the task, keep the last N checkpoints, score a spaced
subset on `select` and keep the best as the task's original."""
import argparse
import json
from pathlib import Path

import mlflow
import torch

from condpdiff.artifacts import CHECKPOINTS, ORIGINAL, TASK_LAYOUT, split_file
from condpdiff.config import load_params
from condpdiff.corpus import save_task_corpus, spaced_indices
from condpdiff.distributed import world
from condpdiff.evaluation import task_scorer
from condpdiff.finetune import finetune_and_collect
from condpdiff.glue import TASK_SPECS, headline, read_jsonl
from condpdiff.lora import save_layouts
from condpdiff.tracking import metric_logger, stage_run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--task", required=True, choices=sorted(TASK_SPECS))
    parser.add_argument("--prepared", type=Path, required=True, help="this task's prepared splits")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    params, task = load_params(args.params), args.task
    torch.set_flush_denormal(True)  # denormals slow LoRA training on CPU a lot
    args.out.mkdir(parents=True, exist_ok=True)

    with stage_run("collect", params, task=task):
        train, select = (read_jsonl(split_file(args.prepared, split)) for split in ("train", "select"))
        recipe = params.collect.for_task(task)
        scorer = task_scorer(params.base, params.lora, task, recipe.eval_batch_size, params.seed)
        checkpoints, steps = finetune_and_collect(scorer.model, scorer.tokenizer, task, train, recipe, scorer.layout,
                                                  params.base.max_length, params.seed, on_step=metric_logger())
        if not world().is_main:  # torchrun: rank 0 writes the outputs
            return
        save_task_corpus(args.out / CHECKPOINTS, checkpoints, steps)
        scored = spaced_indices(recipe.originals_scored, len(steps))
        best, scores = scorer.best_on_select(checkpoints[scored], select)
        for index, metrics in zip(scored, scores):
            mlflow.log_metric("select_headline", headline(task, metrics), step=steps[index])
        original = {"best_index": scored[best], "best_step": steps[scored[best]], "best_select": scores[best],
                    "scored": {str(steps[i]): headline(task, m) for i, m in zip(scored, scores)}}
        save_layouts(args.out / TASK_LAYOUT, {task: scorer.layout}, scorer.layout.length,
                     {task: TASK_SPECS[task].num_labels})
        (args.out / ORIGINAL).write_text(json.dumps(original, indent=1))
        mlflow.log_metrics({f"best_select_{k}": v for k, v in scores[best].items()})
        print(task, "best original on select:", headline(task, scores[best]), "at step", original["best_step"])


if __name__ == "__main__":
    main()
