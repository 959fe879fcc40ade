"""Conditions as a user types them, scored: does a wording the generator never saw still give the task?

A YAML file lists, per known task, free conditions: `{description, examples?}` (examples in the README's
`text -> label` format). For each one a registered generator (the `GeneratorBundle` behind
`python -m condpdiff generate` and the REST endpoint) writes K PEFT adapter folders; each folder is
loaded into a fresh base model by peft, exactly as a user would load it, and scored on the task's
`select` split. The task's own training condition (a request by task name) with the same K and seed
is scored the same way beside them: the paired reference.

Knows nothing of MLflow: `python -m condpdiff describe` logs the run.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import yaml

from condpdiff.artifacts import split_file
from condpdiff.bundle import GeneratorBundle, Request
from condpdiff.evaluation import predict
from condpdiff.glue import TASK_SPECS, compute_metrics, headline, read_jsonl
from condpdiff.lora import load_base_model, load_tokenizer


def read_free_conditions(path: Path) -> dict[str, list[dict]]:
    """{task: [{"description": str, "examples": [str, ...]}, ...]}, checked before any generation."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"free conditions file missing: {path}")
    tasks = yaml.safe_load(Path(path).read_text()) or {}
    for task, entries in tasks.items():
        if task not in TASK_SPECS:
            raise ValueError(f"{path}: unknown task {task!r}; known {sorted(TASK_SPECS)}")
        if not isinstance(entries, list) or not entries:
            raise ValueError(f"{path}: task {task!r} needs a non-empty list of conditions")
        for entry in entries:
            if not isinstance(entry, dict) or set(entry) - {"description", "examples"}:
                raise ValueError(f"{path}: {task}: each condition is {{description, examples}}, got {entry!r}")
            if not isinstance(entry.get("description"), str) or not entry["description"].strip():
                raise ValueError(f"{path}: {task}: a condition without a description")
            examples = entry.get("examples", [])
            if not isinstance(examples, list) or not all(isinstance(e, str) for e in examples):
                raise ValueError(f"{path}: {task}: `examples` must be a list of strings")
    return tasks


def score_folder(bundle: GeneratorBundle, folder: Path, task: str, tokenizer, examples, labels,
                 batch_size: int) -> float:
    """The headline metric of the PEFT adapter folder on `examples`, loaded as a user loads it."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_base_model(bundle.base, TASK_SPECS[task].num_labels, seed=0), str(folder))
    predictions = predict(model, tokenizer, task, examples, batch_size, bundle.base.max_length)
    return headline(task, compute_metrics(task, predictions, labels))


def score_free_conditions(bundle: GeneratorBundle, conditions: dict[str, list[dict]], prepared: Path,
                          samples: int, seed: int, batch_size: int = 64) -> dict:
    """Per task: the own training condition's and each free condition's `select` mean over K samples."""
    unknown = sorted(set(conditions) - set(bundle.spec["tasks"]))
    if unknown:
        raise ValueError(f"this generator was not trained on {unknown}: no select split to score them on")
    tokenizer = load_tokenizer(bundle.base)
    results = {}
    for task, entries in conditions.items():
        select = read_jsonl(split_file(prepared / task, "select"))
        labels = np.array([e.label for e in select], dtype=np.float64)
        own = Request(task=task, num_samples=samples, seed=seed)
        typed = [Request(description=entry["description"], examples=entry.get("examples"),
                         num_labels=TASK_SPECS[task].num_labels, num_samples=samples, seed=seed) for entry in entries]
        rows = []
        for request in [own, *typed]:
            with tempfile.TemporaryDirectory() as tmp:
                scores = [score_folder(bundle, folder, task, tokenizer, select, labels, batch_size)
                          for folder in bundle.write_adapters(request, Path(tmp))]
            rows.append({"description": request.description or "own training condition",
                         "examples": request.examples or [], "select_mean": float(np.mean(scores)), "select": scores})
        own = rows[0]["select_mean"]
        for row in rows[1:]:
            row["minus_own"] = row["select_mean"] - own
        results[task] = rows
        print(task, [round(r["select_mean"], 2) for r in rows], flush=True)
    return {"tasks": results, "average": position_averages(results)}


def position_averages(results: dict[str, list[dict]]) -> dict[str, float]:
    """The six-task average of each condition position (0 = own), where every task has the same count."""
    counts = {len(rows) for rows in results.values()}
    if len(counts) != 1:
        return {}
    return {f"condition_{k}_select_mean": float(np.mean([rows[k]["select_mean"] for rows in results.values()]))
            for k in range(counts.pop())}


def render_free_table(result: dict, source: str) -> str:
    lines = [f"# Conditions a user typed, through the registered generator ({source})", "",
             f"`select` mean over {result['samples']} adapters per condition (PEFT folders loaded by peft), "
             f"seed {result['seed']}; model {result['model']} (version {result['version']}).", "",
             "| task | condition | examples | select mean | minus own |", "|---|---|---|---|---|"]
    for task, rows in result["tasks"].items():
        for row in rows:
            minus = f"{row['minus_own']:+.2f}" if "minus_own" in row else ""
            examples = "<br>".join(row["examples"]).replace("|", "/")
            lines.append(f"| {task} | {row['description']} | {examples} | {row['select_mean']:.2f} | {minus} |")
    if result["average"]:
        lines += ["", "| condition position | six-task select mean | minus own |", "|---|---|---|"]
        own = result["average"]["condition_0_select_mean"]
        for key, value in result["average"].items():
            lines.append(f"| {key.split('_')[1]} | {value:.2f} | {value - own:+.2f} |")
    return "\n".join(lines) + "\n"
