"""Fashion-MNIST from its four IDX `.gz` files (the DVC remote's layout), as 32x32 images in [0, 1].

Read with gzip + numpy instead of torchvision's FashionMNIST, which wants the files un-gzipped in
its own folder layout and otherwise downloads them."""
import gzip
from pathlib import Path

import numpy as np

CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
SIZE = 32  # 28x28 padded by 2 on each side: PixArt's patching wants a size divisible by its patch size
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


class ImageDataError(ValueError):
    """A missing, truncated or malformed image file, named."""


def _read_idx(path: Path, magic: int, header: int) -> np.ndarray:
    if not path.is_file():
        raise ImageDataError(f"{path}: missing (run `make setup`, which pulls data/fashion-mnist)")
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as error:
        raise ImageDataError(f"{path}: not a readable gzip file ({error})") from error
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise ImageDataError(f"{path}: IDX magic number {found}, expected {magic}")
    count = int.from_bytes(raw[4:8], "big")
    body = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if body.size % max(count, 1) or count == 0:
        raise ImageDataError(f"{path}: {body.size} bytes do not hold {count} items")
    return body.reshape(count, -1)


def load_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 32, 32) float32 in [0, 1], labels (N,) int64) of `train` (60,000) or `test` (10,000)."""
    image_file, label_file = FILES[split]
    images = _read_idx(Path(folder) / image_file, 2051, 16).reshape(-1, 28, 28)
    labels = _read_idx(Path(folder) / label_file, 2049, 8).reshape(-1).astype(np.int64)
    if len(images) != len(labels):
        raise ImageDataError(f"{folder}: {len(images)} images but {len(labels)} labels in {split}")
    padded = np.zeros((len(images), SIZE, SIZE), dtype=np.float32)
    padded[:, 2:30, 2:30] = images / 255.0
    return padded, labels


def caption(label: int) -> str:
    return f"a photo of a {CLASSES[label]}"
