"""Task conditions: the text of a task (description, optionally with two examples) and its
embedding by a pretrained text encoder; or one-hot / learned ids as ablations."""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from condpdiff.config import BaseModelConfig, ConditionsConfig, ConditionType
from condpdiff.glue import Example


def read_descriptions(path: Path) -> dict[str, dict]:
    """{task: {"descriptions": [str, ...], "labels": [str, ...] | None, "label_sets": [[str, ...], ...]}};
    the first description and `labels` are the task's own; the other descriptions, and the other label
    words in `label_sets` (optional), are what condition-diverse training may draw."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"task description file missing: {path}")
    tasks = yaml.safe_load(Path(path).read_text())
    for task, entry in tasks.items():
        wordings = entry.get("descriptions") if isinstance(entry, dict) else None
        if not isinstance(wordings, list) or not wordings or not all(isinstance(w, str) and w.strip() for w in wordings):
            raise ValueError(f"{path}: task {task!r} needs `descriptions`, a non-empty list of non-empty strings")
        labels, label_sets = entry.get("labels"), entry.get("label_sets", [])
        if label_sets and (labels is None or not isinstance(label_sets, list)
                           or any(not isinstance(s, list) or len(s) != len(labels) for s in label_sets)):
            raise ValueError(f"{path}: task {task!r}: `label_sets` must be a list of label lists, each as long "
                             f"as `labels`")
    return tasks


def read_rewordings(path: Path) -> dict[str, list[str]]:
    """Held-out rewordings {task: [str, ...]}: never read by generator training."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"rewordings file missing: {path}")
    tasks = yaml.safe_load(Path(path).read_text())
    for task, wordings in tasks.items():
        if not isinstance(wordings, list) or not all(isinstance(w, str) and w.strip() for w in wordings):
            raise ValueError(f"{path}: task {task!r} needs a list of non-empty strings")
    return tasks


def format_example(example: Example, labels: list[str] | None) -> str:
    text = example.text_a if example.text_b is None else f"{example.text_a} [SEP] {example.text_b}"
    answer = f"{example.label:.1f}" if labels is None else labels[int(example.label)]
    return f"Example: {text} -> {answer}."


def condition_text(
    description: str, labels: list[str] | None, train: list[Example], examples: int, seed: int
) -> str:
    """The description, plus `examples` training examples drawn by seed (text_fewshot), their answers
    written with `labels` (None: the number, for regression)."""
    if examples == 0:
        return description
    drawn = random.Random(seed).sample(train, examples)
    return " ".join([description, *(format_example(e, labels) for e in drawn)])


def request_text(description: str, examples: list[str] | None) -> str:
    """A user's condition as one text: their description, then each `text -> label` example."""
    return " ".join([description.strip(), *(f"Example: {e}." for e in examples or [])])


class MiniLMTextEncoder:
    """all-MiniLM-L6-v2 as a sentence encoder: mean pooling over tokens, L2-normalized."""

    def __init__(self, base: BaseModelConfig):
        from transformers import AutoModel, AutoTokenizer

        from condpdiff.lora import base_model_path

        path = base_model_path("minilm")
        self.name = "sentence-transformers/all-MiniLM-L6-v2"
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> torch.Tensor:
        inputs = self.tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        tokens = self.model(**inputs).last_hidden_state  # (B, T, H)
        mask = inputs["attention_mask"][:, :, None].float()
        pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return torch.nn.functional.normalize(pooled, dim=-1)


class OpenClipTextEncoder:
    """open_clip's text tower, from a local weights file the user gives (no download)."""

    def __init__(self, model_name: str, weights: str | None):
        import open_clip

        if weights is None or not Path(weights).is_file():
            raise FileNotFoundError(f"conditions.clip_weights: CLIP weights file not found: {weights}")
        self.name = f"open_clip:{model_name}"
        self.model = open_clip.create_model(model_name, pretrained=weights).eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> torch.Tensor:
        return torch.nn.functional.normalize(self.model.encode_text(self.tokenizer(texts)).float(), dim=-1)


def make_text_encoder(cfg: ConditionsConfig, base: BaseModelConfig):
    if cfg.encoder == "open_clip":
        return OpenClipTextEncoder(cfg.clip_model, cfg.clip_weights)
    return MiniLMTextEncoder(base)


@dataclass(frozen=True)
class Conditions:
    """Each task's condition, and the bank of condition variants that training draws from.

    `vectors[t]` (T, D) is what generation and evaluation use: task t's first description with
    few-shot draw 0. `bank[t]` (T, B, D) holds B = wordings x draws variants of the same task (the
    first description's draw 0 first); with wordings = draws = 1 the bank is `vectors` alone.
    """

    vectors: torch.Tensor
    bank: torch.Tensor
    texts: list[str]  # the text behind each row of `vectors`
    encoder: str


def build_conditions(
    cfg: ConditionsConfig,
    base: BaseModelConfig,
    tasks: list[str],
    train: dict[str, list[Example]],
    seed: int,
) -> Conditions:
    if cfg.type in (ConditionType.onehot, ConditionType.learned):
        ids = torch.eye(len(tasks))
        return Conditions(ids, ids[:, None, :], [f"{cfg.type.value}:{t}" for t in tasks], cfg.type.value)
    texts = bank_texts(cfg, tasks, train, seed)
    encoder = make_text_encoder(cfg, base)
    bank = encoder.encode(texts).reshape(len(tasks), cfg.wordings * cfg.draws, -1)
    per_task = cfg.wordings * cfg.draws
    return Conditions(bank[:, 0].clone(), bank, texts[::per_task], encoder.name)


def example_count(cfg: ConditionsConfig) -> int:
    """Few-shot examples per condition text: `examples` for text_fewshot, none for the other types."""
    return cfg.examples if cfg.type is ConditionType.text_fewshot else 0


def bank_texts(cfg: ConditionsConfig, tasks: list[str], train: dict[str, list[Example]], seed: int) -> list[str]:
    """The text of every bank row, task-major: per task, `wordings` descriptions x `draws` few-shot draws.
    Draw d writes its answers with `draw_labels(entry, d)`; the last `bare_draws` draws are the
    description alone (a user who gives no examples)."""
    descriptions = read_descriptions(Path(cfg.descriptions))
    missing = [t for t in tasks if t not in descriptions]
    if missing:
        raise KeyError(f"{cfg.descriptions}: no description for task(s) {missing}")
    short = [t for t in tasks if len(descriptions[t]["descriptions"]) < cfg.wordings]
    if short:
        raise ValueError(f"conditions.wordings={cfg.wordings}, but {cfg.descriptions} has fewer descriptions "
                         f"for {short}")
    examples = example_count(cfg)
    plain_from = cfg.draws - cfg.bare_draws
    return [
        condition_text(wording, draw_labels(descriptions[t], d), train[t], examples if d < plain_from else 0,
                       seed=draw_seed(seed, t, d))
        for t in tasks for wording in descriptions[t]["descriptions"][:cfg.wordings] for d in range(cfg.draws)
    ]


def held_out_texts(cfg: ConditionsConfig, entry: dict, task: str, wordings: list[str], train: list[Example],
                   seed: int) -> list[str]:
    """Wordings training never read, as generation reads a condition: each with few-shot draw 0's
    examples, in the task's own label words (`entry` is the task's descriptions entry)."""
    examples = example_count(cfg)
    return [condition_text(w, entry.get("labels"), train, examples, seed=draw_seed(seed, task, 0)) for w in wordings]


def draw_labels(entry: dict, draw: int) -> list[str] | None:
    """The label words of few-shot draw `draw`: the task's own `labels` for draw 0 (the one generation
    uses), then each of `label_sets` in turn, so training sees answers written as users write them."""
    if entry.get("labels") is None:
        return None
    choices = [entry["labels"], *entry.get("label_sets", [])]
    return choices[draw % len(choices)]


def draw_seed(seed: int, task: str, draw: int) -> int:
    """The few-shot draw `draw` of a task; draw 0 is the one generation uses."""
    return hash_seed(seed, task) + 100_003 * draw


def hash_seed(seed: int, task: str) -> int:
    return seed * 1000 + sum(ord(c) for c in task)
