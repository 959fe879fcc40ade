"""Scoring helpers of the evaluate stage that are pure math: distances and summaries."""
from __future__ import annotations

import numpy as np
import torch


def nearest_distances(queries: torch.Tensor, references: torch.Tensor, exclude_self: bool = False) -> torch.Tensor:
    """L2 distance from each query row to its nearest reference row."""
    distances = torch.cdist(queries.double(), references.double())
    if exclude_self:
        distances.fill_diagonal_(float("inf"))
    return distances.min(dim=1).values


def mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))
