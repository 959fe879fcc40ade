"""Stage evaluate: score generated adapters against the best original, the soup, the no-diffusion
analogue, the head trained alone and the base.

Every choice (best generated, best original) is made on `select`; `eval` only reports.
"""
import argparse
import json
from pathlib import Path

import mlflow
import torch
from safetensors import safe_open

from condpdiff.artifacts import LAYOUTS, ORIGINALS, SCORES, VECTORS, split_file, task_corpus_file
from condpdiff.baselines import HEAD_ONLY
from condpdiff.comparison import compare_task, summarize
from condpdiff.config import load_params
from condpdiff.corpus import load_task_corpus
from condpdiff.evaluation import task_scorer
from condpdiff.glue import headline, read_jsonl
from condpdiff.lora import load_tokenizer, read_layouts
from condpdiff.tracking import stage_run


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("prepared", "corpus", "generated", "headonly", "out", "metrics"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    params = load_params(args.params)
    torch.set_flush_denormal(True)
    with stage_run("evaluate", params):
        missing = [str(path) for task in params.data.tasks
                   for path in (args.generated / task / VECTORS, args.headonly / task / HEAD_ONLY) if not path.is_file()]
        if missing:
            raise FileNotFoundError(f"evaluate needs the generate and headonly stages' files; missing: {missing}")
        layouts, _, _ = read_layouts(args.corpus / LAYOUTS)
        originals = json.loads((args.corpus / ORIGINALS).read_text())
        tokenizer = load_tokenizer(params.base)
        results = {}
        for task in params.data.tasks:
            select, evaluation = (read_jsonl(split_file(args.prepared / task, s)) for s in ("select", "eval"))
            corpus, _ = load_task_corpus(task_corpus_file(args.corpus, task))
            with safe_open(str(args.generated / task / VECTORS), "pt") as handle:
                generated, wrong = handle.get_tensor("generated"), handle.get_tensor("wrong_condition")
                trivial = handle.get_tensor("no_diffusion")
                wrong_task = handle.metadata()["wrong_condition_task"]
            with safe_open(str(args.headonly / task / HEAD_ONLY), "pt") as handle:
                head_only = handle.get_tensor("head_only")
            scorer = task_scorer(params.base, params.lora, task, params.evaluate.batch_size, params.seed,
                                 tokenizer=tokenizer, layout=layouts[task])
            results[task] = compare_task(scorer, corpus, originals[task], generated, wrong, wrong_task, trivial,
                                         head_only, select, evaluation, params.evaluate.score_all_on_eval)
            print(task, {k: round(headline(task, v), 2) for k, v in results[task]["eval"].items()
                         if isinstance(v, dict)})
        metrics = summarize(results, params.data.tasks)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / SCORES).write_text(json.dumps(results, indent=1))
        args.metrics.parent.mkdir(parents=True, exist_ok=True)
        args.metrics.write_text(json.dumps(metrics, indent=1))
        mlflow.log_metrics({f"{split}_{k}": v for split in metrics for k, v in metrics[split].items()})
        mlflow.log_artifact(str(args.out / SCORES))


if __name__ == "__main__":
    main()
