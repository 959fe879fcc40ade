"""Pipeline profile: wall time per stage of the newest finished `dvc repro` runs (from MLflow), and where the
time goes inside the two heaviest stages: a short fine-tune (collect) and one `select` scoring (evaluate),
split into tokenization, the model's forward pass, the backward pass, the optimizer step, the metric
computation and the rest (batching, copying the vector into the model, the loop itself).

The split wraps the stage code from outside (the tokenizer calls the stages make, forward hooks,
`Tensor.backward`, a global optimizer hook, evaluate's metric function): the loops timed are the stages' own.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import mlflow
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

import condpdiff.evaluation
import condpdiff.finetune
from condpdiff.artifacts import LAYOUTS, split_file
from condpdiff.config import params_hash
from condpdiff.evaluation import task_scorer
from condpdiff.finetune import finetune_and_collect
from condpdiff.glue import TASK_SPECS, read_jsonl
from condpdiff.lora import build_peft_model, load_tokenizer, model_layout, read_layouts
from condpdiff.tracking import newest_finished_run, setup_experiment

# functions timed by wrapping them: the tokenizer calls the stages make (each batch's encoding, and collect's one
# pass over the train set), every backward pass, and the metric computation of a scoring
WRAPPED = (("tokenize", condpdiff.finetune, "encode"), ("tokenize", condpdiff.finetune, "token_lengths"),
           ("tokenize", condpdiff.evaluation, "encode"), ("backward", torch.Tensor, "backward"),
           ("score", condpdiff.evaluation, "compute_metrics"))
# the parts a split reports: the timed ones, then whatever the stage spent outside them
PARTS = ("tokenize", "forward", "backward", "optimizer", "score", "rest")
STAGES = ("prepare", "collect", "headonly", "gather", "normalize", "autoencoder", "conditions", "diffusion",
          "generate", "evaluate", "report", "register")


@contextmanager
def split_timer(model):
    """Seconds spent tokenizing (the stages' `encode`), in the model's forward, in backward passes, in optimizer
    steps and computing metrics."""
    spent = {part: 0.0 for part in PARTS if part != "rest"}
    marks = {}
    originals = {(key, owner, name): getattr(owner, name) for key, owner, name in WRAPPED}

    def timed(key, function):
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - start
        return call

    def mark(key):
        return lambda *_: marks.__setitem__(key, time.perf_counter())

    def add(key, since):
        return lambda *_: spent.__setitem__(key, spent[key] + time.perf_counter() - marks[since])

    handles = [model.register_forward_pre_hook(mark("forward")), model.register_forward_hook(add("forward", "forward")),
               register_optimizer_step_pre_hook(mark("optimizer")),
               register_optimizer_step_post_hook(add("optimizer", "optimizer"))]
    for (key, owner, name), function in originals.items():
        setattr(owner, name, timed(key, function))
    try:
        yield spent
    finally:
        for (_, owner, name), function in originals.items():
            setattr(owner, name, function)
        for handle in handles:
            handle.remove()


def shares(spent: dict, total: float) -> dict:
    rest = max(total - sum(spent.values()), 0.0)
    return {**{k: v / total for k, v in spent.items()}, "rest": rest / total, "seconds": total}


def run(params, outputs: Path, task: str, steps: int) -> dict:
    experiment, pipeline = setup_experiment(), params_hash(params)  # sets the store: the client comes after
    client = mlflow.MlflowClient()
    stages, run_ids = {}, {}
    for stage in STAGES:
        tags = [{"task": t} for t in params.data.tasks] if stage in ("collect", "headonly", "prepare") else [{}]
        found = [r for tag in tags if (r := newest_finished_run(client, experiment, stage, pipeline, **tag))]
        if found:
            stages[stage] = sum((r.info.end_time - r.info.start_time) / 1000 for r in found)
            run_ids[stage] = [r.info.run_id for r in found]
    tokenizer = load_tokenizer(params.base)
    model = build_peft_model(params.base, params.lora, TASK_SPECS[task].num_labels, params.seed)
    train = read_jsonl(split_file(outputs / "prepared" / task, "train"))
    full = params.collect.for_task(task)
    kept = max(1, min(round(steps * full.keep_last / full.steps), steps // full.stride))  # the same share kept
    cfg = replace(full, steps=steps, keep_last=kept)
    with split_timer(model) as spent:
        start = time.perf_counter()
        finetune_and_collect(model, tokenizer, task, train, cfg, model_layout(model), params.base.max_length,
                             params.seed)
        collect = shares(dict(spent), time.perf_counter() - start)
    layouts, _, _ = read_layouts(outputs / "corpus" / LAYOUTS)
    scorer = task_scorer(params.base, params.lora, task, params.evaluate.batch_size, params.seed, tokenizer=tokenizer,
                         layout=layouts[task])
    select = read_jsonl(split_file(outputs / "prepared" / task, "select"))
    vector = torch.zeros(layouts[task].length)
    scorer.metrics(vector, select)  # warm-up
    with split_timer(scorer.model) as spent:
        start = time.perf_counter()
        scorer.metrics(vector, select)
        evaluate = shares(dict(spent), time.perf_counter() - start)
    return {"stages_seconds": stages, "run_ids": run_ids, "task": task, "collect_steps": steps, "collect_split": collect,
            "evaluate_split": evaluate, "select_examples": len(select)}


def render(result: dict) -> str:
    total = sum(result["stages_seconds"].values())
    lines = ["### Pipeline profile", "", "Newest finished run of each stage (per-task stages summed):", "",
             "| stage | minutes | share |", "|---|---|---|"]
    for stage, seconds in result["stages_seconds"].items():
        lines.append(f"| {stage} | {seconds / 60:.1f} | {seconds / total:.0%} |")
    lines += [f"| all | {total / 60:.1f} | |", "",
              f"Inside the stages ({result['task']}): where the time goes", "",
              "| part | tokenize | forward | backward | optimizer | metric | rest (batching, loop) | seconds |",
              "|---|---|---|---|---|---|---|---|"]
    for name, key in ((f"collect, {result['collect_steps']} fine-tuning steps", "collect_split"),
                      (f"evaluate, one select scoring ({result['select_examples']} examples)", "evaluate_split")):
        split = result[key]
        lines.append(f"| {name} | " + " | ".join(f"{split[part]:.0%}" for part in PARTS)
                     + f" | {split['seconds']:.1f} |")
    return "\n".join(lines)
