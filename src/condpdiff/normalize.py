"""Corpus normalization: per-task z-score (`task`), one z-score over all tasks (`batch`), `none`,
or `cond`: the task's mean and one within-task std pooled over tasks.

Statistics are per element. An element that never varies (the zero padding, say) gets a
standard deviation of 1, so it never divides by zero.

Under `cond` the per-task means serve training only (they centre each task's checkpoints, and
they are the targets of the condition's mean predictor); generation reads `shared_std` and the
global mean and std (`global_mean`, `global_std`), which no task owns.
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
    std: torch.Tensor  # (T, L); rows are equal under `batch` / `none` / `cond`
    global_mean: torch.Tensor  # (L,): over every checkpoint of every task
    global_std: torch.Tensor  # (L,)

    @property
    def shared_std(self) -> torch.Tensor:
        """(L,): the std that every task shares (`batch`, `none`, `cond`)."""
        if self.method is Norm.task:
            raise ValueError("norm=task has no shared std: each task has its own")
        return self.std[0]

    def transform(self, x: torch.Tensor, task_index: torch.Tensor) -> torch.Tensor:
        return (x - self.mean[task_index]) / self.std[task_index]

    def inverse(self, z: torch.Tensor, task_index: torch.Tensor) -> torch.Tensor:
        return z * self.std[task_index] + self.mean[task_index]

    def from_global(self, z: torch.Tensor) -> torch.Tensor:
        """Global z units -> weight space: what norm=cond's mean predictor writes (..., L)."""
        return self.global_mean + self.global_std * z

    def save(self, path: Path) -> None:
        save_file({"mean": self.mean.contiguous(), "std": self.std.contiguous(),
                   "global_mean": self.global_mean.contiguous(), "global_std": self.global_std.contiguous()},
                  str(path), metadata={"method": self.method.value})

    @classmethod
    def load(cls, path: Path) -> "Normalizer":
        if not Path(path).is_file():
            raise FileNotFoundError(f"normalizer stats missing: {path}")
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            method = Norm(handle.metadata()["method"])
        tensors = load_file(str(path))
        missing = [k for k in ("mean", "std", "global_mean", "global_std") if k not in tensors]
        if missing:
            raise ValueError(f"normalizer stats {path} lack {missing} (written by an older version: re-run normalize)")
        return cls(method, tensors["mean"], tensors["std"], tensors["global_mean"], tensors["global_std"])


def _safe_std(x: torch.Tensor) -> torch.Tensor:
    std = x.std(dim=0, unbiased=False) if x.shape[0] > 1 else torch.zeros(x.shape[1:])
    return torch.where(std < MIN_STD, torch.ones_like(std), std)


def fit_normalizer(method: Norm, corpus: torch.Tensor, task_index: torch.Tensor, num_tasks: int) -> Normalizer:
    """corpus (M, L) float32, task_index (M,) long."""
    if not torch.isfinite(corpus).all():
        raise ValueError("corpus holds NaN or inf")
    length = corpus.shape[1]
    global_mean, global_std = corpus.mean(dim=0), _safe_std(corpus)
    task_means = torch.stack([corpus[task_index == t].mean(dim=0) for t in range(num_tasks)])
    if method is Norm.none:
        mean, std = torch.zeros(num_tasks, length), torch.ones(num_tasks, length)
    elif method is Norm.batch:
        mean, std = global_mean.expand(num_tasks, -1).clone(), global_std.expand(num_tasks, -1).clone()
    elif method is Norm.cond:
        within = torch.stack([(corpus[task_index == t] - task_means[t]).pow(2).mean(dim=0) for t in range(num_tasks)])
        pooled = within.mean(dim=0).sqrt()
        mean = task_means
        std = torch.where(pooled < MIN_STD, torch.ones_like(pooled), pooled).expand(num_tasks, -1).clone()
    else:
        mean = task_means
        std = torch.stack([_safe_std(corpus[task_index == t]) for t in range(num_tasks)])
    return Normalizer(method, mean, std, global_mean, global_std)
