"""The checkpoint corpus on disk: one safetensors file per task, plus the layouts."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from condpdiff.artifacts import task_corpus_file


def save_task_corpus(path: Path, checkpoints: torch.Tensor, steps: list[int]) -> None:
    save_file({"checkpoints": checkpoints.contiguous(), "steps": torch.tensor(steps)}, str(path))


def load_task_corpus(path: Path) -> tuple[torch.Tensor, list[int]]:
    """(N, L_task) checkpoints and their steps; a missing, corrupt or non-finite file is an error."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"corpus file missing: {path}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"corpus file is corrupt: {path}: {error}") from None
    if "checkpoints" not in tensors:
        raise ValueError(f"corpus file has no 'checkpoints' tensor: {path}")
    if not torch.isfinite(tensors["checkpoints"]).all():
        raise ValueError(f"corpus file holds NaN or inf: {path}")
    return tensors["checkpoints"], tensors["steps"].tolist()


def pad_to(x: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad the last dimension to `length` (the common length of all tasks)."""
    return torch.nn.functional.pad(x, (0, length - x.shape[-1]))


def spaced_indices(count: int, total: int) -> list[int]:
    """`count` indices evenly spaced over range(total), always including the last; 0 = all."""
    if count <= 0 or count >= total:
        return list(range(total))
    return sorted({round(i * (total - 1) / (count - 1)) for i in range(count)}) if count > 1 else [total - 1]


def stack_corpus(corpus_dir: Path, tasks: list[str], padded_length: int,
                 last_n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every task's checkpoints (its last `last_n`, or all), zero-padded and stacked: (M, L) and task ids (M,)."""
    blocks = []
    for task in tasks:
        checkpoints, _ = load_task_corpus(task_corpus_file(corpus_dir, task))
        if last_n is not None and not 1 <= last_n <= len(checkpoints):
            raise ValueError(f"n={last_n}: the corpus keeps {len(checkpoints)} checkpoints of {task}")
        blocks.append(pad_to(checkpoints[-(last_n or len(checkpoints)):], padded_length))
    task_index = torch.cat([torch.full((len(block),), i) for i, block in enumerate(blocks)])
    return torch.cat(blocks), task_index
