"""Per-style image sets (train / select / eval) on disk, and image grids for the reports.

Each style draws its own images: a seeded permutation of the train images the base model never saw,
cut into consecutive blocks in the order of `STYLES` (not of the params' style list), so adding a style
to the params changes no other style's images. Select and eval come from the test split the same way.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from condpdiff.vision.data import load_split
from condpdiff.vision.styles import STYLES, apply_style

SPLITS = ("train", "select", "eval")


def style_set_file(folder: Path, style: str) -> Path:
    return Path(folder) / f"{style}.safetensors"


def to_model_range(images: np.ndarray) -> torch.Tensor:
    """(N, H, W) in [0, 1] -> (N, 1, H, W) in [-1, 1], the range the models and the Inception read."""
    return torch.from_numpy(images).float()[:, None] * 2 - 1


def build_style_sets(folder: Path, styles: list[str], base_images: int, sizes: dict[str, int],
                     seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """{style: {"train": (N, 1, 32, 32), "train_labels": (N,), "select": ..., "eval": ...}}."""
    train, train_labels = load_split(folder, "train")
    test, test_labels = load_split(folder, "test")
    generator = np.random.default_rng(seed)
    train_order = base_images + generator.permutation(len(train) - base_images)
    test_order = generator.permutation(len(test))
    per_test = sizes["select"] + sizes["eval"]
    if len(STYLES) * sizes["train"] > len(train_order) or len(STYLES) * per_test > len(test_order):
        raise ValueError(f"{sizes} images per style for {len(STYLES)} styles exceed Fashion-MNIST's "
                         f"{len(train_order)} train (after base_images) and {len(test_order)} test images")
    sets = {}
    for style in styles:
        position = list(STYLES).index(style)
        train_index = train_order[position * sizes["train"]:(position + 1) * sizes["train"]]
        test_index = test_order[position * per_test:(position + 1) * per_test]
        chosen = {"train": (train[train_index], train_labels[train_index]),
                  "select": (test[test_index[:sizes["select"]]], test_labels[test_index[:sizes["select"]]]),
                  "eval": (test[test_index[sizes["select"]:]], test_labels[test_index[sizes["select"]:]])}
        sets[style] = {}
        for split, (images, labels) in chosen.items():
            sets[style][split] = to_model_range(apply_style(style, images))
            sets[style][f"{split}_labels"] = torch.from_numpy(labels)
    return sets


def save_style_set(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


def load_style_set(path: Path) -> dict[str, torch.Tensor]:
    """A style's images; a missing or corrupt file, an empty split or a non-finite image is an error."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"style image set missing: {path}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"style image set is corrupt: {path}: {error}") from None
    for split in SPLITS:
        images = tensors.get(split)
        if images is None or len(images) == 0:
            raise ValueError(f"style image set {path} has no {split} images")
        if images.ndim != 4 or images.shape[1] != 1 or not torch.isfinite(images).all():
            raise ValueError(f"style image set {path}: {split} must be finite (N, 1, H, W) images, "
                             f"got {tuple(images.shape)}")
    return tensors


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) uint8: the pixels an 8-bit PNG of the images holds.
    Rounds as torchvision's `save_image` does, so the in-memory score equals the score of the PNGs."""
    unit = (images.detach().float().cpu() + 1) / 2
    pixels = (unit * 255 + 0.5).clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).numpy()


def save_grid(rows: list[torch.Tensor], path: Path, scale: int = 2) -> None:
    """A PNG of image rows: each row (N, 1, H, W) in [-1, 1], N images side by side, 2 px gaps."""
    height, width = rows[0].shape[-2:]
    columns = max(len(row) for row in rows)
    canvas = np.full((len(rows) * (height + 2), columns * (width + 2)), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            pixels = to_uint8(image[None])[0, :, :, 0]
            canvas[r * (height + 2):r * (height + 2) + height, c * (width + 2):c * (width + 2) + width] = pixels
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).resize((canvas.shape[1] * scale, canvas.shape[0] * scale), Image.NEAREST).save(path)
