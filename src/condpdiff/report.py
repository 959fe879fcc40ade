"""The Table-1-style Markdown report."""
from __future__ import annotations

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
            ("model soup (corpus mean)", "soup"), ("base (head only, LoRA removed)", "base")]
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
                   ("soup", "soup"), ("wrong condition: mean", "wrong_condition_mean"),
                   ("wrong condition: best", "wrong_condition_best")]
    for label, key in select_rows:
        values = [_h(t, results[t]["select"][key]) for t in tasks]
        lines.append(f"| {label} | " + " | ".join(f"{v:.2f}" for v in values) + f" | {sum(values) / len(values):.2f} |")
    lines += ["", "The wrong-condition control generates with another task's condition "
              "(" + ", ".join(f"{t} <- {results[t]['select']['wrong_condition_task']}" for t in tasks) + ") "
              "but this task's normalization statistics and layout, scored on this task's `select`.", "",
              "## Are the generated adapters copies?", "",
              "| task | generated -> nearest corpus checkpoint (median L2) | corpus nearest-neighbour (median L2) "
              "| generated -> soup (median L2) |", "|---|---|---|---|"]
    for t in tasks:
        d = results[t]["distance"]
        lines.append(f"| {TASK_SPECS[t].folder} | {d['generated_to_corpus_median']:.4f} | "
                     f"{d['corpus_nearest_neighbour_median']:.4f} | {d['generated_to_soup_median']:.4f} |")
    lines += ["", "## Data", "", "| task | train | select | eval | note |", "|---|---|---|---|---|"]
    for t in tasks:
        s = sizes[t]
        note = "QNLI ships dev only offline: train/select/eval all carved from dev by seed" if s["carved_from_dev"] else ""
        lines.append(f"| {TASK_SPECS[t].folder} | {s['train']} | {s['select']} | {s['eval']} | {note} |")
    return "\n".join(lines) + "\n"
