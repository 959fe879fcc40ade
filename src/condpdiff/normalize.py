"""Corpus normalization: per-task z-score (`task`), one z-score over all tasks (`batch`), or `none`.

Statistics are per element. An element that never varies (the zero padding, say) gets a
standard deviation of 1, so it never divides by zero.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from condpdiff.config import Norm

MIN_STD = 1e-8


@dataclass(frozen=True)
class Normalizer:
    method: Norm
    mean: torch.Tensor  # (T, L): one row per task; rows are equal under `batch` / `none`
    std: torch.Tensor  # (T, L)

    def transform(self, x: torch.Tensor, task_index: torch.Tensor) -> torch.Tensor:
        return (x - self.mean[task_index]) / self.std[task_index]

    def inverse(self, z: torch.Tensor, task_index: torch.Tensor) -> torch.Tensor:
        return z * self.std[task_index] + self.mean[task_index]

    def save(self, path: Path) -> None:
        save_file({"mean": self.mean.contiguous(), "std": self.std.contiguous()}, str(path),
                  metadata={"method": self.method.value})

    @classmethod
    def load(cls, path: Path) -> "Normalizer":
        if not Path(path).is_file():
            raise FileNotFoundError(f"normalizer stats missing: {path}")
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            method = Norm(handle.metadata()["method"])
        tensors = load_file(str(path))
        return cls(method, tensors["mean"], tensors["std"])


def _safe_std(x: torch.Tensor) -> torch.Tensor:
    std = x.std(dim=0, unbiased=False) if x.shape[0] > 1 else torch.zeros(x.shape[1:])
    return torch.where(std < MIN_STD, torch.ones_like(std), std)


def fit_normalizer(method: Norm, corpus: torch.Tensor, task_index: torch.Tensor, num_tasks: int) -> Normalizer:
    """corpus (M, L) float32, task_index (M,) long."""
    if not torch.isfinite(corpus).all():
        raise ValueError("corpus holds NaN or inf")
    length = corpus.shape[1]
    if method is Norm.none:
        mean, std = torch.zeros(num_tasks, length), torch.ones(num_tasks, length)
    elif method is Norm.batch:
        mean = corpus.mean(dim=0).expand(num_tasks, -1).clone()
        std = _safe_std(corpus).expand(num_tasks, -1).clone()
    else:
        mean = torch.stack([corpus[task_index == t].mean(dim=0) for t in range(num_tasks)])
        std = torch.stack([_safe_std(corpus[task_index == t]) for t in range(num_tasks)])
    return Normalizer(method, mean, std)
