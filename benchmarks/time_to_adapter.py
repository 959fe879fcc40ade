"""Time to an adapter: generating one against fine-tuning one to the same `select` score.

Generation, defined exactly: K adapters from a condition to PEFT folders on disk (encoding the condition's
text, sampling, decoding, de-normalizing and writing included; the text encoder, the generator and the PEFT
model are loaded once, as a serving process holds them), for
DDIM-k and DDPM-1000, K = 1 unbatched and K = 10, 100 batched. Fine-tuning: the collect stage's schedule
on the same task, from the same initialisation, until its `select` score is within 0.5 of the generated
adapter's (checked every `every` steps; the checks' own time is not counted), or its whole schedule.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import torch

from common import conditions, generator_files, median_seconds
from condpdiff.artifacts import CONDITION_TEXTS, LAYOUTS, split_file
from condpdiff.conditions import make_text_encoder
from condpdiff.config import params_hash
from condpdiff.evaluation import predict, task_scorer
from condpdiff.finetune import finetune_and_collect
from condpdiff.generator import load_generator
from condpdiff.glue import TASK_SPECS, compute_metrics, headline, read_jsonl
from condpdiff.lora import build_peft_model, load_tokenizer, model_layout, read_layouts, write_adapter
from condpdiff.tracking import newest_finished_run, setup_experiment

SAMPLERS = [("ddim", 10), ("ddim", 25), ("ddim", 50), ("ddim", 100), ("ddpm", 1000)]
MARGIN = 0.5
GENERATOR_STAGES = ("gather", "normalize", "autoencoder", "conditions", "diffusion")  # after collect, before sampling


class _Reached(Exception):
    pass


def finetune_until(params, task: str, train, select, target: float, every: int, tokenizer) -> dict:
    """Fine-tune `task` with collect's schedule until `select` >= target - MARGIN; training seconds only."""
    model = build_peft_model(params.base, params.lora, TASK_SPECS[task].num_labels, params.seed)
    cfg = params.collect.for_task(task)
    labels = np.array([e.label for e in select], dtype=np.float64)
    spent, reached = {"checks": 0.0}, {}

    def on_step(step: int, _metrics: dict) -> None:
        if step % every and step != cfg.steps:
            return
        start = time.perf_counter()
        predictions = predict(model, tokenizer, task, select, params.evaluate.batch_size, params.base.max_length)
        value = headline(task, compute_metrics(task, predictions, labels))
        model.train()
        spent["checks"] += time.perf_counter() - start
        if value >= target - MARGIN:
            reached.update(step=step, select=value)
            raise _Reached

    start = time.perf_counter()
    try:
        finetune_and_collect(model, tokenizer, task, train, cfg, model_layout(model), params.base.max_length,
                             params.seed, on_step)
    except _Reached:
        pass
    seconds = time.perf_counter() - start - spent["checks"]
    return {"seconds": seconds, "reached_step": reached.get("step"), "reached_select": reached.get("select"),
            "schedule_steps": cfg.steps, "check_every": every}


def stage_seconds(client, experiment_id: str, stage: str, pipeline_id: str, **tags: str) -> float | None:
    """Wall seconds of the newest finished run of `stage` (collect: task=...), this configuration's first."""
    run = newest_finished_run(client, experiment_id, stage, pipeline_id, **tags)
    return (run.info.end_time - run.info.start_time) / 1000 if run else None


def run(params, outputs: Path, task: str, repeats: int, finetune_repeats: int, every: int) -> dict:

    layouts, _, num_labels = read_layouts(outputs / "corpus" / LAYOUTS)
    generator = load_generator(generator_files(outputs))
    position = params.data.tasks.index(task)
    text = json.loads((outputs / "conditions" / CONDITION_TEXTS).read_text())["texts"][task]
    encoder = make_text_encoder(params.conditions, params.base)
    if not torch.allclose(encoder.encode([text])[0], conditions(outputs)[position], atol=1e-4):
        raise ValueError(f"{task}'s condition text does not encode to the conditions stage's vector: "
                         "re-run `dvc repro conditions`")
    layout = layouts[task]
    model = build_peft_model(params.base, params.lora, num_labels[task], params.seed)
    tokenizer = load_tokenizer(params.base)
    select = read_jsonl(split_file(outputs / "prepared" / task, "select"))
    scorer = task_scorer(params.base, params.lora, task, params.evaluate.batch_size, params.seed,
                         tokenizer=tokenizer, layout=layout)

    def to_disk(sampler: str, steps: int, samples: int):
        with tempfile.TemporaryDirectory() as folder:
            condition = encoder.encode([text])[0]
            vectors = generator.generate(condition, position, layout.length, samples, sampler, steps, seed=0)
            for k, vector in enumerate(vectors):
                write_adapter(model, vector, layout, Path(folder) / f"adapter_{k:03d}")
        return vectors

    stage = (params.generate.sampler.value, params.generate.inference_steps)
    generation = []
    for sampler, steps in SAMPLERS + ([stage] if stage not in SAMPLERS else []):
        timing = median_seconds(lambda: to_disk(sampler, steps, 1), repeats)
        score = scorer.headline(to_disk(sampler, steps, 1)[0], select)
        generation.append({"sampler": sampler, "steps": steps, "samples": 1, "seconds": timing["median"],
                           "runs": timing["runs"], "select": score, "stage": (sampler, steps) == stage})
        print(f"{sampler}-{steps} K=1: {timing['median']:.3f} s, select {score:.2f}")
    batched = []
    for sampler, steps in (("ddim", 50), ("ddpm", 1000)):
        for samples in (10, 100):
            timing = median_seconds(lambda: to_disk(sampler, steps, samples), repeats, warmup=0)
            batched.append({"sampler": sampler, "steps": steps, "samples": samples, "seconds": timing["median"],
                            "per_adapter": timing["median"] / samples, "runs": timing["runs"]})
            print(f"{sampler}-{steps} K={samples}: {timing['median']:.2f} s")
    target = next(g["select"] for g in generation if (g["sampler"], g["steps"]) == stage)
    train = read_jsonl(split_file(outputs / "prepared" / task, "train"))
    finetunes = [finetune_until(params, task, train, select, target, every, tokenizer) for _ in range(finetune_repeats)]
    finetune = sorted(finetunes, key=lambda f: f["seconds"])[len(finetunes) // 2]
    finetune["runs"] = [f["seconds"] for f in finetunes]
    print(f"fine-tune to select >= {target - MARGIN:.2f}: {finetune['seconds']:.1f} s (step {finetune['reached_step']})")
    experiment, pipeline = setup_experiment(), params_hash(params)  # sets the store: the client comes after
    client = mlflow.MlflowClient()
    training = {f"collect_{t}": stage_seconds(client, experiment, "collect", pipeline, task=t) for t in params.data.tasks}
    training.update({name: stage_seconds(client, experiment, name, pipeline) for name in GENERATOR_STAGES})
    loto = outputs.parent / "reports" / "conditional" / "loto.json"
    unseen = None
    if loto.is_file():
        folds = json.loads(loto.read_text())["folds"]
        unseen = {row: sum(f["scores"][row]["eval_of_best"] for f in folds) / len(folds) for row in ("generated", "original")}
    return {"task": task, "target_select": target, "margin": MARGIN, "generation": generation, "batched": batched,
            "finetune": finetune, "training_seconds": training, "unseen_tasks_eval": unseen}


def render(result: dict) -> str:
    finetune = result["finetune"]
    reached = finetune["reached_step"] is not None
    outcome = (f"reached {finetune['reached_select']:.2f} at step {finetune['reached_step']}" if reached else
               f"never within {result['margin']} in {finetune['schedule_steps']} steps: the ratios are lower bounds")
    bound = "" if reached else ">= "
    lines = [f"### Time to an adapter ({result['task']})", "",
             f"Fine-tuning (collect's schedule, select checked every {finetune['check_every']} steps, checks not "
             f"counted) to select >= {result['target_select'] - result['margin']:.2f} (the default sampler's adapter "
             f"{result['target_select']:.2f} minus {result['margin']}): **{finetune['seconds']:.1f} s**, {outcome} "
             f"(median of {len(finetune['runs'])}).", "",
             f"| sampler | K | seconds (median of {len(result['generation'][0]['runs'])}) | per adapter | "
             "fine-tune / generate | select (K = 1) |",
             "|---|---|---|---|---|---|"]
    for row in result["generation"] + result["batched"]:
        per = row["seconds"] / row["samples"]
        score = f"{row['select']:.2f}" if "select" in row else ""
        lines.append(f"| {row['sampler'].upper()}-{row['steps']} | {row['samples']} | {row['seconds']:.3f} | "
                     f"{per:.3f} | {bound}{finetune['seconds'] / per:,.0f}x | {score} |")
    training = result["training_seconds"]
    if all(v is not None for v in training.values()):
        tasks = sum(k.startswith("collect_") for k in training)
        corpus = sum(v for k, v in training.items() if k.startswith("collect_"))
        generator = sum(v for k, v in training.items() if not k.startswith("collect_"))
        stage = next(row for row in result["generation"] if row.get("stage"))
        saved = finetune["seconds"] - stage["seconds"]
        lines += ["", f"**Break-even.** Collecting the corpora took {corpus / 60:.1f} min ({tasks} tasks) and training "
                  f"the generator on them (gather to diffusion) {generator / 60:.1f} min: {(corpus + generator) / 60:.1f}"
                  f" min in all. A task with a corpus was fine-tuned to make it, so generating its adapter saves "
                  f"nothing. A task without one saves {saved:.0f} s of fine-tuning per adapter (the default sampler, "
                  f"{stage['sampler'].upper()}-{stage['steps']}), so the generator "
                  f"pays for itself after {(corpus + generator) / saved:,.0f} such tasks ({generator / saved:,.0f} "
                  f"if the corpora existed anyway)"]
        unseen = result.get("unseen_tasks_eval")
        lines[-1] += (f", *if* its adapters for unseen tasks were usable: leave-one-task-out puts them at "
                      f"{unseen['generated']:.2f} `eval` against {unseen['original']:.2f} fine-tuned, so today "
                      "they are not." if unseen else ".")
    return "\n".join(lines)
