"""Scoring flat vectors on a task: the one scorer that collect, evaluate, ablations and tune share.

A `Scorer` holds one task's model, tokenizer and layout; it loads a vector into the model and
computes every metric of the task on a list of examples. Choices (the best original, the best
generated sample) are made by `best_on_select` on the `select` split only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from condpdiff.config import BaseModelConfig, LoraConfig
from condpdiff.finetune import STSB_SCALE, encode, example_length
from condpdiff.glue import TASK_SPECS, Example, compute_metrics, headline
from condpdiff.lora import Layout, build_peft_model, load_tokenizer, load_vector, model_layout


@torch.inference_mode()
def predict(model, tokenizer, task: str, examples: list[Example], batch_size: int, max_length: int) -> np.ndarray:
    """Class ids, or STS-B scores on the 0-5 scale. Batches are length-sorted for speed."""
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: example_length(examples[i]))
    outputs = np.zeros(len(examples), dtype=np.float64)
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        logits = model(**encode(tokenizer, [examples[i] for i in index], max_length)).logits
        if TASK_SPECS[task].num_labels == 1:
            outputs[index] = logits[:, 0].double().numpy() * STSB_SCALE
        else:
            outputs[index] = logits.argmax(dim=-1).double().numpy()
    return outputs


@dataclass
class Scorer:
    """One task's model and tokenizer, ready to score flat vectors of its layout."""

    model: object
    tokenizer: object
    task: str
    layout: Layout
    batch_size: int
    max_length: int

    def metrics(self, vector: torch.Tensor, examples: list[Example]) -> dict[str, float]:
        """Load `vector` into the model and compute every metric of the task on `examples`."""
        load_vector(self.model, vector, self.layout)
        predictions = predict(self.model, self.tokenizer, self.task, examples, self.batch_size, self.max_length)
        labels = np.array([e.label for e in examples], dtype=np.float64)
        return compute_metrics(self.task, predictions, labels)

    def headline(self, vector: torch.Tensor, examples: list[Example]) -> float:
        return headline(self.task, self.metrics(vector, examples))

    def best_on_select(self, vectors, select: list[Example]) -> tuple[int, list[dict[str, float]]]:
        """(index of the vector with the best headline on `select`, every vector's metrics); ties: the first."""
        scores = [self.metrics(vector, select) for vector in vectors]
        best = max(range(len(scores)), key=lambda k: headline(self.task, scores[k]))
        return best, scores


def task_scorer(base: BaseModelConfig, lora: LoraConfig, task: str, batch_size: int, seed: int,
                tokenizer=None, layout: Layout | None = None) -> Scorer:
    """A fresh PEFT model for `task`; a given `layout` (read from a corpus) must be the model's own."""
    model = build_peft_model(base, lora, TASK_SPECS[task].num_labels, seed)
    actual = model_layout(model)
    if layout is not None and (layout.names, layout.shapes) != (actual.names, actual.shapes):
        raise ValueError(f"{task}: the corpus layout does not match the model built from the params "
                         "(base / lora changed since collect?)")
    return Scorer(model, tokenizer or load_tokenizer(base), task, actual, batch_size, base.max_length)


def nearest_distances(queries: torch.Tensor, references: torch.Tensor, exclude_self: bool = False) -> torch.Tensor:
    """L2 distance from each query row to its nearest reference row."""
    distances = torch.cdist(queries.double(), references.double())
    if exclude_self:
        distances.fill_diagonal_(float("inf"))
    return distances.min(dim=1).values


def mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))
