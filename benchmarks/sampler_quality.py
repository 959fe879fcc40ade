"""DDIM-k against DDPM-1000: the six-task `select` and `eval` scores of the generate stage's K samples.

Per task and sampler: the stage's K samples from the task's own condition with its seed, each scored on
`select`; the best on `select` is scored on `eval`. The DDPM-1000 row is the evaluate stage's own (same
samples), read from `outputs/evaluation/scores.json`, so it is not sampled twice.
"""
from __future__ import annotations

import json
from pathlib import Path

from common import conditions, generator_files
from condpdiff.artifacts import LAYOUTS, SCORES, split_file
from condpdiff.evaluation import mean_std, task_scorer
from condpdiff.generator import generation_seed, load_generator
from condpdiff.glue import headline, read_jsonl
from condpdiff.lora import load_tokenizer, read_layouts

STEPS = (10, 25, 50, 100)
MARGIN = 0.5


def run(params, outputs: Path, steps: tuple[int, ...] = STEPS) -> dict:
    layouts, _, _ = read_layouts(outputs / "corpus" / LAYOUTS)
    generator = load_generator(generator_files(outputs))
    bank = conditions(outputs)
    tokenizer = load_tokenizer(params.base)
    stage = json.loads((outputs / "evaluation" / SCORES).read_text())
    cfg = params.generate
    reference = f"{cfg.sampler.value.upper()}-{cfg.inference_steps} (the stage's)"
    rows = {reference: {task: {"select_best": max(stage[task]["select"]["generated_values"]),
                               "select_mean": stage[task]["select"]["generated_mean"],
                               "eval_of_best": headline(task, stage[task]["eval"]["generated"])}
                        for task in params.data.tasks}}
    samplers = [("ddim", k) for k in steps if ("ddim", k) != (cfg.sampler.value, cfg.inference_steps)]
    if (cfg.sampler.value, cfg.inference_steps) != ("ddpm", 1000):
        samplers.append(("ddpm", 1000))  # the paper's sampler is always a row
    for position, task in enumerate(params.data.tasks):
        scorer = task_scorer(params.base, params.lora, task, params.evaluate.batch_size, params.seed,
                             tokenizer=tokenizer, layout=layouts[task])
        select, evaluation = (read_jsonl(split_file(outputs / "prepared" / task, s)) for s in ("select", "eval"))
        for sampler, k in samplers:
            vectors = generator.generate(bank[position], position, layouts[task].length, cfg.samples, sampler, k,
                                         generation_seed(params.seed, position), cfg.guidance)
            best, scores = scorer.best_on_select(vectors, select)
            values = [headline(task, s) for s in scores]
            name = f"{sampler.upper()}-{k}"
            rows.setdefault(name, {})[task] = {"select_best": values[best], "select_mean": mean_std(values)[0],
                                               "eval_of_best": scorer.headline(vectors[best], evaluation)}
            print(f"{name} {task}: select best {values[best]:.2f}, eval {rows[name][task]['eval_of_best']:.2f}")
    averages = {name: {key: sum(t[key] for t in row.values()) / len(row) for key in ("select_best", "select_mean",
                                                                                     "eval_of_best")}
                for name, row in rows.items()}
    return {"samples": cfg.samples, "tasks": params.data.tasks, "rows": rows, "averages": averages,
            "reference": reference, "margin": MARGIN}


def smallest_within(result: dict, key: str = "select_best") -> str | None:
    """The DDIM row with the fewest steps whose six-task average is within the margin of the reference."""
    reference = result["averages"][result["reference"]][key]
    for name, values in result["averages"].items():
        if name.startswith("DDIM-") and values[key] >= reference - result["margin"]:
            return name
    return None


def render(result: dict) -> str:
    reference = result["averages"][result["reference"]]
    lines = [f"### DDIM-k against the stage's sampler ({len(result['tasks'])}-task averages, K = {result['samples']})",
             "", "| sampler | select, best of K | gap | select, mean of K | gap | eval of the best |",
             "|---|---|---|---|---|---|"]
    for name, values in result["averages"].items():
        lines.append(f"| {name} | {values['select_best']:.2f} | {values['select_best'] - reference['select_best']:+.2f} "
                     f"| {values['select_mean']:.2f} | {values['select_mean'] - reference['select_mean']:+.2f} "
                     f"| {values['eval_of_best']:.2f} |")
    for key, label in (("select_best", "best of K"), ("select_mean", "mean of K")):
        within = smallest_within(result, key)
        lines.append("")
        lines.append(f"Fewest DDIM steps within {result['margin']} of {result['reference']} on select ({label}): "
                     f"**{within or 'none of those tried'}**.")
    return "\n".join(lines)
