"""Stage collect: LoRA-fine-tune each task, keep the last N checkpoints, score a spaced subset on select."""
import argparse
import json
from pathlib import Path

import mlflow
import torch

from condpdiff.config import load_params
from condpdiff.corpus import save_task_corpus, spaced_indices
from condpdiff.finetune import finetune_and_collect, score_vector
from condpdiff.glue import TASK_SPECS, headline, read_jsonl
from condpdiff.lora import build_peft_model, load_tokenizer, model_layout, save_layouts
from condpdiff.tracking import metric_logger, nested_run, stage_run

parser = argparse.ArgumentParser()
parser.add_argument("--params", default="params.yaml")
parser.add_argument("--prepared", type=Path, required=True)
parser.add_argument("--out", type=Path, required=True)
args = parser.parse_args()
params = load_params(args.params)
torch.set_flush_denormal(True)  # denormals slow LoRA training on CPU a lot
args.out.mkdir(parents=True, exist_ok=True)

with stage_run("collect", params, ("base", "lora", "collect", "seed")):
    tokenizer = load_tokenizer(params.base)
    splits = {t: {s: read_jsonl(args.prepared / t / f"{s}.jsonl") for s in ("train", "select")} for t in params.data.tasks}
    layouts, num_labels, originals = {}, {}, {}
    for task in params.data.tasks:
        num_labels[task] = TASK_SPECS[task].num_labels
        model = build_peft_model(params.base, params.lora, num_labels[task], params.seed)
        layouts[task] = model_layout(model)
        with nested_run(f"finetune-{task}", task=task):
            checkpoints, steps = finetune_and_collect(
                model, tokenizer, task, splits[task]["train"], params.collect, layouts[task],
                params.base.max_length, params.seed, on_step=metric_logger())
            save_task_corpus(args.out / f"{task}.safetensors", checkpoints, steps)
            scores = {}
            for index in spaced_indices(params.collect.originals_scored, len(steps)):
                metrics = score_vector(model, tokenizer, task, checkpoints[index], layouts[task],
                                       splits[task]["select"], params.collect.eval_batch_size, params.base.max_length)
                scores[index] = metrics
                mlflow.log_metric("select_headline", headline(task, metrics), step=steps[index])
            best = max(scores, key=lambda i: headline(task, scores[i]))
            originals[task] = {"best_index": best, "best_step": steps[best], "best_select": scores[best],
                               "scored": {str(steps[i]): headline(task, m) for i, m in scores.items()}}
            mlflow.log_metrics({f"best_select_{k}": v for k, v in scores[best].items()})
            print(task, "best original on select:", headline(task, scores[best]), "at step", steps[best])
    padded_length = max(layout.length for layout in layouts.values())
    save_layouts(args.out / "layout.json", layouts, padded_length, num_labels)
    (args.out / "originals.json").write_text(json.dumps(originals, indent=1))
    mlflow.log_artifact(str(args.out / "originals.json"))
