"""Where does the condition-only generator put a wording it never trained on? A minutes-long proxy for
the study's `reworded` rows and for `describe`, scored in weight space instead of on `select`.

Under norm=cond a generated vector is `mean_predictor(c)` plus a small residual, so a wording's fate is
decided by where the mean predictor puts it. For a condition c of task t the probe reports

    relative error = ||m(c) - m_t|| / min_{s != t} ||m_t - m_s||      (weight space)

0 is the task's own mean; 0.5 is half way to the nearest other task's; `nearest` is the share of
conditions whose prediction is closest to their own task's mean. Distances run over the whole padded
vector (LoRA, head and the padding of shorter heads), the space the mean predictor writes. Only the
mean predictor is trained (on the same bank and corpus as the generator), so one probe row costs about
two minutes here; it picks which condition recipe is worth a full study, and never replaces the
study's task metric.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from condpdiff.artifacts import LAYOUTS, split_file
from condpdiff.conditions import build_conditions, held_out_texts, make_text_encoder, read_descriptions, request_text
from condpdiff.config import ConditionType, Norm, Params
from condpdiff.corpus import stack_corpus
from condpdiff.glue import read_jsonl
from condpdiff.lora import read_layouts
from condpdiff.normalize import fit_normalizer
from condpdiff.study import row_setup
from condpdiff.training import fit_condition_mean


def probe_texts(params: Params, tasks: list[str], train: dict, rewordings: dict[str, list[str]] | None,
                free: dict[str, dict[str, list[dict]]]) -> dict[str, dict[str, list[str]]]:
    """{set name: {task: [text, ...]}}: held-out rewordings carry the few-shot examples of draw 0 (as the
    study scores them); free conditions are written as a registry request writes them."""
    sets = {}
    if rewordings is not None:
        descriptions = read_descriptions(Path(params.conditions.descriptions))
        sets["rewordings"] = {t: held_out_texts(params.conditions, descriptions[t], t, rewordings[t], train[t],
                                                params.seed) for t in tasks if t in rewordings}
    for name, conditions in free.items():
        sets[name] = {t: [request_text(e["description"], e.get("examples")) for e in conditions[t]]
                      for t in tasks if t in conditions}
    return {name: texts for name, texts in sets.items() if texts}  # a file with none of the tasks: no set


def run_probe(params: Params, tasks: list[str], prepared: Path, corpus_dir: Path,
              rewordings: dict[str, list[str]] | None, free: dict[str, dict[str, list[dict]]]) -> dict:
    if params.conditions.type not in (ConditionType.text, ConditionType.text_fewshot):
        raise ValueError(f"the probe reads text conditions, not conditions.type={params.conditions.type.value}")
    if len(tasks) < 2:
        raise ValueError(f"the probe measures against the nearest other task's mean: it needs two tasks, got {tasks}")
    _, padded_length, _ = read_layouts(corpus_dir / LAYOUTS)
    stacked, task_index = stack_corpus(corpus_dir, tasks, padded_length)
    train = {t: read_jsonl(split_file(prepared / t, "train")) for t in tasks}
    sets = probe_texts(params, tasks, train, rewordings, free)
    normalizer = fit_normalizer(Norm.cond, stacked, task_index, len(tasks))
    built = build_conditions(params.conditions, params.base, tasks, train, params.seed)
    model = fit_condition_mean(params, normalizer, built.bank)  # the normalizer is cond whatever params.norm
    means = normalizer.mean
    gaps = torch.cdist(means, means).fill_diagonal_(float("inf")).min(dim=1).values
    encoder = make_text_encoder(params.conditions, params.base)

    def judge(task_position: int, conditions: torch.Tensor) -> list[tuple[float, bool]]:
        with torch.inference_mode():
            predicted = normalizer.from_global(model(conditions))
        distances = torch.cdist(predicted, means)  # (N, T)
        relative = distances[:, task_position] / gaps[task_position]
        return [(float(r), bool(d.argmin() == task_position)) for r, d in zip(relative, distances)]

    result = {"own": {t: judge(i, built.vectors[i][None]) for i, t in enumerate(tasks)}}
    for name, texts in sets.items():
        result[name] = {t: judge(tasks.index(t), encoder.encode(texts[t])) for t in texts}
    return {name: summarise(per_task) for name, per_task in result.items()}


def summarise(per_task: dict[str, list[tuple[float, bool]]]) -> dict:
    every = [pair for pairs in per_task.values() for pair in pairs]
    return {"relative_mean": sum(r for r, _ in every) / len(every), "relative_max": max(r for r, _ in every),
            "nearest": sum(n for _, n in every) / len(every), "count": len(every),
            "each": {t: [round(r, 4) for r, _ in pairs] for t, pairs in per_task.items()}}


def probe_rows(folder: Path) -> dict[str, dict]:
    """The probe rows among the JSON files of `folder` ({name: row})."""
    return {path.stem: row for path in sorted(Path(folder).glob("*.json"))
            if "sets" in (row := json.loads(path.read_text()))}


def render_probe_table(rows: dict[str, dict]) -> str:
    """One line per probe row: per condition set, mean and max relative error and the nearest share."""
    names = list(dict.fromkeys(s for row in rows.values() for s in row["sets"]))
    lines = ["| row | generator | overrides | " + " | ".join(f"{s}: rel. error mean / max / nearest (n)" for s in names)
             + " |", "|---|---|---|" + "---|" * len(names)]
    for name, row in rows.items():
        cells = []
        for s in names:
            v = row["sets"].get(s)
            cells.append("n/a" if v is None else
                         f"{v['relative_mean']:.3f} / {v['relative_max']:.3f} / {v['nearest']:.2f} ({v['count']})")
        lines.append(f"| {name} | {row_setup(row['params'])} | {' '.join(row['overrides']) or 'none'} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
