"""The evaluate stage's comparison: generated adapters against the best original, the soup and the base.

Every choice (the best generated sample, the best original) is made on `select`; `eval` only
reports. Pure library code: the stage script logs what `compare_task` and `summarize` return.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from condpdiff.evaluation import Scorer, mean_std, nearest_distances
from condpdiff.glue import Example, headline

METHODS = ("generated", "original", "soup", "no_diffusion", "head_only", "base")


def base_vector(vector: torch.Tensor, lora_mask: torch.Tensor) -> torch.Tensor:
    """The vector with its LoRA part zeroed: the base model under the vector's head."""
    return torch.where(lora_mask, torch.zeros_like(vector), vector)


def compare_task(scorer: Scorer, corpus: torch.Tensor, original: dict, generated: torch.Tensor,
                 wrong: torch.Tensor, wrong_task: str, trivial: torch.Tensor, head_only: torch.Tensor,
                 select: list[Example], evaluation: list[Example], score_all_on_eval: bool) -> dict:
    """One task's scores on `select` and `eval`, and the distances that say whether samples are copies.

    corpus (N, L) the task's kept checkpoints; generated / wrong / trivial (K, L) samples from the task's
    own condition, from another task's, and from the no-diffusion analogue; head_only (L,) the head trained
    alone (LoRA zero); `original` the collect stage's record of the best checkpoint.
    """
    task = scorer.task
    best_k, own_select = scorer.best_on_select(tqdm(generated, desc=f"{task} generated", leave=False), select)
    wrong_values = [scorer.headline(v, select) for v in tqdm(wrong, desc=f"{task} wrong condition", leave=False)]
    trivial_k, trivial_select = scorer.best_on_select(tqdm(trivial, desc=f"{task} no diffusion", leave=False), select)
    best_original = corpus[original["best_index"]]
    soup = corpus.mean(dim=0)
    base = base_vector(best_original, scorer.layout.lora_mask())
    chosen = {"generated": generated[best_k], "original": best_original, "soup": soup,
              "no_diffusion": trivial[trivial_k], "head_only": head_only, "base": base}
    eval_scores = {name: scorer.metrics(vector, evaluation) for name, vector in chosen.items()}
    if score_all_on_eval:
        all_eval = [scorer.headline(v, evaluation) for v in generated]
        eval_scores["generated_all_mean"], eval_scores["generated_all_std"] = mean_std(all_eval)
    own_values = [headline(task, m) for m in own_select]
    own_mean, own_std = mean_std(own_values)
    trivial_values = [headline(task, m) for m in trivial_select]
    return {
        "select": {
            "generated_best": own_select[best_k], "generated_mean": own_mean, "generated_std": own_std,
            "original_best": original["best_select"],
            "soup": scorer.metrics(soup, select), "wrong_condition_task": wrong_task,
            "no_diffusion_best": trivial_select[trivial_k],
            "no_diffusion_mean": mean_std(trivial_values)[0],
            "head_only": scorer.metrics(head_only, select),
            "wrong_condition_mean": mean_std(wrong_values)[0], "wrong_condition_best": max(wrong_values),
            # every sample's headline, in sample order: what the figures plot against distance
            "generated_values": own_values, "no_diffusion_values": trivial_values,
            "wrong_condition_values": wrong_values,
        },
        "eval": eval_scores,
        "distance": {
            "generated_to_corpus_median": nearest_distances(generated, corpus).median().item(),
            "corpus_nearest_neighbour_median": nearest_distances(corpus, corpus, exclude_self=True).median().item(),
            "generated_to_soup_median": (generated - soup).norm(dim=1).median().item(),
            "no_diffusion_to_corpus_median": nearest_distances(trivial, corpus).median().item(),
        },
    }


def summarize(results: dict[str, dict], tasks: list[str]) -> dict[str, dict[str, float]]:
    """The headline numbers of every task and their averages: `metrics/eval.json`."""

    def value(task: str, entry) -> float:
        return headline(task, entry) if isinstance(entry, dict) else entry

    def average(split: str, name: str) -> float:
        return sum(value(t, results[t][split][name]) for t in tasks) / len(tasks)

    metrics = {"eval": {}, "select": {}}
    for task in tasks:
        for name in METHODS:
            metrics["eval"][f"{task}_{name}"] = headline(task, results[task]["eval"][name])
        metrics["select"][f"{task}_generated_best"] = headline(task, results[task]["select"]["generated_best"])
        metrics["select"][f"{task}_original_best"] = headline(task, results[task]["select"]["original_best"])
        metrics["select"][f"{task}_wrong_condition_mean"] = results[task]["select"]["wrong_condition_mean"]
        metrics["select"][f"{task}_generated_mean"] = results[task]["select"]["generated_mean"]
    for name in METHODS:
        metrics["eval"][f"average_{name}"] = average("eval", name)
    for name in ("generated_best", "original_best", "generated_mean", "wrong_condition_mean", "no_diffusion_best",
                 "no_diffusion_mean", "head_only"):
        metrics["select"][f"average_{name}"] = average("select", name)
    return metrics
