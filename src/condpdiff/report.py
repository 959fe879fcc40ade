"""The reports: the Table-1-style Markdown table and the ablation tables."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from condpdiff.glue import TASK_SPECS, headline

METRIC_NAMES = {"accuracy": "acc", "f1": "F1", "matthews": "MCC", "pearson": "Pearson"}


def _h(task: str, value) -> float:
    return headline(task, value) if isinstance(value, dict) else value


def render_table1(results: dict, sizes: dict, norm: str, condition: str) -> str:
    tasks = list(results)
    header = "| method | " + " | ".join(
        f"{TASK_SPECS[t].folder} ({METRIC_NAMES[TASK_SPECS[t].headline]})" for t in tasks) + " | average |"
    rule = "|" + "---|" * (len(tasks) + 2)
    lines = [
        f"# Cond P-Diff on GLUE: Table 1 analogue (norm={norm}, condition={condition})", "",
        "Headline metric x100 on `eval` (the official dev set, capped). Every choice was made on `select`.", "",
        "## eval", "", header, rule,
    ]
    rows = [("original (best on select)", "original"), ("generated (best on select)", "generated"),
            ("model soup (corpus mean)", "soup"), ("no-diffusion analogue (best on select)", "no_diffusion"),
            ("head trained alone (LoRA off)", "head_only"), ("base (original's head, LoRA removed)", "base")]
    for label, key in rows:
        values = [_h(t, results[t]["eval"][key]) for t in tasks]
        lines.append(f"| {label} | " + " | ".join(f"{v:.2f}" for v in values) + f" | {sum(values) / len(values):.2f} |")
    gains = [_h(t, results[t]["eval"]["original"]) - _h(t, results[t]["eval"]["base"]) for t in tasks]
    lines.append("| LoRA gain (original - base) | " + " | ".join(f"{v:+.2f}" for v in gains)
                 + f" | {sum(gains) / len(gains):+.2f} |")
    gaps = [_h(t, results[t]["eval"]["generated"]) - _h(t, results[t]["eval"]["original"]) for t in tasks]
    lines.append("| generated - original | " + " | ".join(f"{v:+.2f}" for v in gaps)
                 + f" | {sum(gaps) / len(gaps):+.2f} |")
    lines += ["", "## select (where the choices are made)", "", header, rule]
    select_rows = [("original best", "original_best"), ("generated best", "generated_best"),
                   ("generated mean", "generated_mean"), ("generated std", "generated_std"),
                   ("soup", "soup"), ("no-diffusion analogue best", "no_diffusion_best"),
                   ("no-diffusion analogue mean", "no_diffusion_mean"), ("head trained alone", "head_only"),
                   ("wrong condition: mean", "wrong_condition_mean"), ("wrong condition: best", "wrong_condition_best")]
    for label, key in select_rows:
        values = [_h(t, results[t]["select"][key]) for t in tasks]
        lines.append(f"| {label} | " + " | ".join(f"{v:.2f}" for v in values) + f" | {sum(values) / len(values):.2f} |")
    lines += ["", "The no-diffusion analogue is N(0, I) de-normalized like a sample (the same K, the same choice on "
              "`select`): what the autoencoder and the diffusion must beat. The head trained alone uses collect's "
              "steps and rates on the frozen base.", "",
              "The wrong-condition control generates with another task's condition "
              "(" + ", ".join(f"{t} <- {results[t]['select']['wrong_condition_task']}" for t in tasks) + ") "
              + ("and this task's layout (condition-only: no per-task statistics are read), "
                 if norm == "cond" else "but this task's normalization statistics and layout, ")
              + "scored on this task's `select`.", "",
              "## Are the generated adapters copies?", "",
              "| task | generated -> nearest corpus checkpoint (median L2) | corpus nearest-neighbour (median L2) "
              "| generated -> soup (median L2) | no-diffusion analogue -> nearest corpus checkpoint (median L2) |",
              "|---|---|---|---|---|"]
    for t in tasks:
        d = results[t]["distance"]
        lines.append(f"| {TASK_SPECS[t].folder} | {d['generated_to_corpus_median']:.4f} | "
                     f"{d['corpus_nearest_neighbour_median']:.4f} | {d['generated_to_soup_median']:.4f} | "
                     f"{d['no_diffusion_to_corpus_median']:.4f} |")
    lines += ["", "## Data", "", "| task | train | select | eval | note |", "|---|---|---|---|---|"]
    for t in tasks:
        s = sizes[t]
        note = "QNLI ships dev only offline: train/select/eval all carved from dev by seed" if s["carved_from_dev"] else ""
        lines.append(f"| {TASK_SPECS[t].folder} | {s['train']} | {s['select']} | {s['eval']} | {note} |")
    return "\n".join(lines) + "\n"


PAPER = {  # Cond P-Diff, BERT r=1, SST-2 / STS-B / MRPC
    "n": {1: (90.23, 80.71, 82.71), 100: (91.63, 80.91, 83.52), 200: (91.63, 81.81, 87.24), 500: (91.63, 81.80, 87.25)},
    "norm": {"none": (55.67, 49.07, 47.01), "batch": (90.60, 80.90, 82.50), "task": (91.63, 81.81, 87.24)},
    "condition": {"onehot": (90.05, 77.12, 80.34), "learned": (90.10, 80.03, 81.81), "text": (90.25, 80.32, 81.98),
                  "text_fewshot": (91.63, 81.81, 87.24)},
    "layers": {"0-1": (91.63, 81.43, 83.45), "0-4": (91.63, 81.45, 83.61), "0-8": (91.63, 81.80, 85.61),
               "0-11": (91.63, 81.81, 87.24),
               "0-5": (91.63, 81.81, 87.24)},  # all layers: our 6-layer 0-5 beside their 12-layer 0-11
}


@dataclass(frozen=True)
class AblationRow:
    """One grid value's result: per task {'select_best', 'select_mean', 'eval'} (empty if the row failed)."""

    value: object
    state: str
    seconds: float
    cached: bool
    scores: dict[str, dict[str, float]]


def write_ablation_tables(name: str, rows: list[AblationRow], tasks: list[str], out_dir: Path) -> Path:
    """reports/ablation_<name>.md and .csv beside the paper's figures; returns the Markdown path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paper = PAPER.get(name, {})
    header = ["value", "state", "seconds"] + [f"{TASK_SPECS[t].folder} eval" for t in tasks] + \
             [f"{TASK_SPECS[t].folder} select best" for t in tasks] + \
             [f"paper {TASK_SPECS[t].folder}" for t in ("sst2", "stsb", "mrpc")]
    table = []
    for row in rows:
        scores = [row.scores.get(t, {}) for t in tasks]
        reference = paper.get(row.value, paper.get(str(row.value), ("", "", "")))
        table.append([row.value, row.state, f"{row.seconds:.0f}" + (" (cached)" if row.cached else "")]
                     + [f"{s['eval']:.2f}" if "eval" in s else "" for s in scores]
                     + [f"{s['select_best']:.2f}" if "select_best" in s else "" for s in scores]
                     + [str(v) for v in reference])
    with open(out_dir / f"ablation_{name}.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([header, *table])
    lines = [f"# Ablation: {name}", "",
             "Generated adapter best on `select`, its `eval` score (x100). Paper: Cond P-Diff, BERT r=1 "
             "(their N grid is 1/100/200/500 and their layers 0-11; ours follow the 6-layer MiniLM and N=100). "
             "`seconds` is the time the row took to compute; \"(cached)\" marks a row reused from an identical "
             "earlier run, such as another grid's default row.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in table]
    path = out_dir / f"ablation_{name}.md"
    path.write_text("\n".join(lines) + "\n")
    return path
