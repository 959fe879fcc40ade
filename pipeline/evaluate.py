"""Stage evaluate: score generated adapters against the best original, the soup and the base.

Every choice (best generated, best original) is made on `select`; `eval` only reports.
"""
import argparse
import json
from pathlib import Path

import mlflow
import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from condpdiff.config import load_params
from condpdiff.corpus import load_task_corpus
from condpdiff.evaluation import mean_std, nearest_distances
from condpdiff.finetune import score_vector
from condpdiff.glue import headline, read_jsonl
from condpdiff.lora import build_peft_model, load_tokenizer, read_layouts
from condpdiff.tracking import stage_run

parser = argparse.ArgumentParser()
parser.add_argument("--params", default="params.yaml")
parser.add_argument("--prepared", type=Path, required=True)
parser.add_argument("--corpus", type=Path, required=True)
parser.add_argument("--generated", type=Path, required=True)
parser.add_argument("--out", type=Path, required=True)
parser.add_argument("--metrics", type=Path, required=True)
args = parser.parse_args()
params = load_params(args.params)
torch.set_flush_denormal(True)

with stage_run("evaluate", params, ("evaluate",)):
    layouts, _, num_labels = read_layouts(args.corpus / "layout.json")
    originals = json.loads((args.corpus / "originals.json").read_text())
    tokenizer = load_tokenizer(params.base)
    results = {}
    for task in params.data.tasks:
        layout = layouts[task]
        select = read_jsonl(args.prepared / task / "select.jsonl")
        evaluation = read_jsonl(args.prepared / task / "eval.jsonl")
        corpus, _ = load_task_corpus(args.corpus / f"{task}.safetensors")
        with safe_open(str(args.generated / task / "vectors.safetensors"), "pt") as handle:
            generated, wrong = handle.get_tensor("generated"), handle.get_tensor("wrong_condition")
            wrong_task = handle.metadata()["wrong_condition_task"]
        model = build_peft_model(params.base, params.lora, num_labels[task], params.seed)

        def score(vector, examples):
            return score_vector(model, tokenizer, task, vector, layout, examples, params.evaluate.batch_size,
                                params.base.max_length)

        own_select = [score(v, select) for v in tqdm(generated, desc=f"{task} generated", leave=False)]
        wrong_select = [score(v, select) for v in tqdm(wrong, desc=f"{task} wrong condition", leave=False)]
        best_k = max(range(len(own_select)), key=lambda k: headline(task, own_select[k]))
        original = corpus[originals[task]["best_index"]]
        soup = corpus.mean(dim=0)
        base = torch.where(layout.lora_mask(), torch.zeros_like(original), original)  # the head, no LoRA
        chosen = {"generated": generated[best_k], "original": original, "soup": soup, "base": base}
        eval_scores = {name: score(vector, evaluation) for name, vector in chosen.items()}
        if params.evaluate.score_all_on_eval:
            all_eval = [headline(task, score(v, evaluation)) for v in generated]
            eval_scores["generated_all_mean"], eval_scores["generated_all_std"] = mean_std(all_eval)
        own_values = [headline(task, m) for m in own_select]
        wrong_values = [headline(task, m) for m in wrong_select]
        results[task] = {
            "select": {
                "generated_best": own_select[best_k], "generated_mean": mean_std(own_values)[0],
                "generated_std": mean_std(own_values)[1], "original_best": originals[task]["best_select"],
                "soup": score(soup, select), "wrong_condition_task": wrong_task,
                "wrong_condition_mean": mean_std(wrong_values)[0], "wrong_condition_best": max(wrong_values),
            },
            "eval": eval_scores,
            "distance": {
                "generated_to_corpus_median": nearest_distances(generated, corpus).median().item(),
                "corpus_nearest_neighbour_median": nearest_distances(corpus, corpus, exclude_self=True).median().item(),
                "generated_to_soup_median": (generated - soup).norm(dim=1).median().item(),
            },
        }
        print(task, {k: round(headline(task, v), 2) for k, v in eval_scores.items() if isinstance(v, dict)})

    def average(split, name):
        values = [results[t][split][name] for t in params.data.tasks]
        return sum(headline(t, v) if isinstance(v, dict) else v for t, v in zip(params.data.tasks, values)) / len(values)

    metrics = {"eval": {}, "select": {}}
    for task in params.data.tasks:
        for name in ("generated", "original", "soup", "base"):
            metrics["eval"][f"{task}_{name}"] = headline(task, results[task]["eval"][name])
        metrics["select"][f"{task}_generated_best"] = headline(task, results[task]["select"]["generated_best"])
        metrics["select"][f"{task}_original_best"] = headline(task, results[task]["select"]["original_best"])
        metrics["select"][f"{task}_wrong_condition_mean"] = results[task]["select"]["wrong_condition_mean"]
    for name in ("generated", "original", "soup", "base"):
        metrics["eval"][f"average_{name}"] = average("eval", name)
    for name in ("generated_best", "original_best", "generated_mean", "wrong_condition_mean"):
        metrics["select"][f"average_{name}"] = average("select", name)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scores.json").write_text(json.dumps(results, indent=1))
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    args.metrics.write_text(json.dumps(metrics, indent=1))
    mlflow.log_metrics({f"{split}_{k}": v for split in metrics for k, v in metrics[split].items()})
    mlflow.log_artifact(str(args.out / "scores.json"))
