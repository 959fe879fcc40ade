"""Image styles for the vision branch: classical transforms of Fashion-MNIST garments, one image set each.

The paper's style LoRAs learn artistic styles; here each style is a fixed transform a 32x32 grayscale
garment still shows plainly, so a LoRA trained on a style's set has something visible to learn and a
generated LoRA can be judged by whether its images carry the style. Every style is a pure function of
the pixels (textures are functions of the pixel coordinates, never random), so a style set is the same
bytes every time it is built from the same images.

Every style maps images (N, 32, 32) float32 in [0, 1] to the same shape, dtype and range. Filters run on
each image alone: a (1, k, k) kernel keeps scipy.ndimage from also filtering across the batch axis.
"""
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from condpdiff.vision.data import SIZE

SILHOUETTE_THRESHOLD = 0.1  # brighter pixels are garment; the faint fringe below would thicken the contour
POSTER_LEVELS = 3  # black, one grey, white: few enough that the flat bands show at 32x32
RELIEF_GAIN = 0.25  # a full-contrast diagonal edge (kernel response 3) reaches the ends of [0, 1] from mid-grey
BLUR_SIGMA = 1.5  # pixels: softens the garment's edges and texture without losing its silhouette
STRIPE_PERIOD = 4  # pixels per bright + dark band pair: 2-pixel bands, fine where checker is coarse
CHECKER_SQUARE = 4  # pixels per checker square: 8 squares across the image
TEXTURE_SHADE = 0.25  # brightness kept in the dark bands and squares: the garment stays visible under them
MOSAIC_BLOCK = 4  # pixels per mosaic tile: an 8x8 picture, still recognisably a garment

# Ordered 4x4 Bayer matrix: each threshold is used once per tile, so a flat grey becomes an even dot pattern.
BAYER = np.array([[0, 8, 2, 10], [12, 4, 14, 6], [3, 11, 1, 9], [15, 7, 13, 5]], dtype=np.float32)
SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float32)  # rightwards brightness change
RELIEF_KERNEL = np.array([[-1, -1, 0], [-1, 0, 1], [0, 1, 1]], dtype=np.float32)  # light from the top left


def _filter(images: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Correlate each image (N, H, W) with a 2-D kernel (k, k); the outside counts as background (0)."""
    return ndimage.correlate(images, kernel[None], mode="constant", cval=0.0)


def _coordinates() -> tuple[np.ndarray, np.ndarray]:
    """(rows (SIZE, 1), columns (1, SIZE)) integer pixel coordinates, for textures that broadcast."""
    return np.arange(SIZE)[:, None], np.arange(SIZE)[None, :]


def sketch(images: np.ndarray) -> np.ndarray:
    """Dark pencil lines on white paper: the Sobel edge magnitude, scaled by each image's strongest edge."""
    magnitude = np.hypot(_filter(images, SOBEL_X), _filter(images, SOBEL_X.T))  # (N, 32, 32)
    strongest = magnitude.max(axis=(1, 2), keepdims=True)  # (N, 1, 1); 0 for a blank image
    return (1.0 - magnitude / np.maximum(strongest, np.finfo(np.float32).tiny)).astype(np.float32)


def relief(images: np.ndarray) -> np.ndarray:
    """Embossed metal: mid-grey everywhere, edges lit on one side and shadowed on the other."""
    return np.clip(0.5 + RELIEF_GAIN * _filter(images, RELIEF_KERNEL), 0.0, 1.0).astype(np.float32)


def poster(images: np.ndarray) -> np.ndarray:
    """Posterized print: every pixel rounded to the nearest of a few evenly spaced grey levels."""
    intervals = POSTER_LEVELS - 1
    return (np.round(images * intervals) / intervals).astype(np.float32)


def negative(images: np.ndarray) -> np.ndarray:
    """Photographic negative: dark garments on a white background."""
    return (1.0 - images).astype(np.float32)


def halftone(images: np.ndarray) -> np.ndarray:
    """Newspaper halftone: pure black and white, greys rendered as ordered (Bayer) dot patterns."""
    tile = (BAYER + 0.5) / BAYER.size  # (4, 4) thresholds strictly inside (0, 1): background stays black
    thresholds = np.tile(tile, (SIZE // len(BAYER), SIZE // len(BAYER)))  # (32, 32)
    return (images > thresholds).astype(np.float32)


def blur(images: np.ndarray) -> np.ndarray:
    """Soft focus: a Gaussian blur of each image (sigma 0 on the batch axis)."""
    return np.clip(ndimage.gaussian_filter(images, sigma=(0, BLUR_SIGMA, BLUR_SIGMA)), 0.0, 1.0).astype(np.float32)


def stripes(images: np.ndarray) -> np.ndarray:
    """Striped fabric: the garment darkened on every other horizontal band."""
    rows, _ = _coordinates()
    bright = (rows // (STRIPE_PERIOD // 2)) % 2 == 0  # (32, 1)
    return (images * np.where(bright, 1.0, TEXTURE_SHADE)).astype(np.float32)


def checker(images: np.ndarray) -> np.ndarray:
    """Checked fabric: the garment darkened on every other square of a checkerboard."""
    rows, columns = _coordinates()
    bright = (rows // CHECKER_SQUARE + columns // CHECKER_SQUARE) % 2 == 0  # (32, 32)
    return (images * np.where(bright, 1.0, TEXTURE_SHADE)).astype(np.float32)


def mosaic(images: np.ndarray) -> np.ndarray:
    """Pixel art: each square tile replaced by its mean, an 8x8 picture shown at 32x32."""
    tiles = SIZE // MOSAIC_BLOCK
    means = images.reshape(-1, tiles, MOSAIC_BLOCK, tiles, MOSAIC_BLOCK).mean(axis=(2, 4))  # (N, 8, 8)
    return np.repeat(np.repeat(means, MOSAIC_BLOCK, axis=1), MOSAIC_BLOCK, axis=2).astype(np.float32)


def outline(images: np.ndarray) -> np.ndarray:
    """Line drawing of the silhouette: a one-pixel white contour on black, no inner detail."""
    silhouette = images > SILHOUETTE_THRESHOLD  # (N, 32, 32)
    inside = ndimage.binary_erosion(silhouette, structure=np.ones((1, 3, 3), dtype=bool))
    return (silhouette & ~inside).astype(np.float32)


# Solarization was tried and left out: on a garment darker than mid-grey it is only a brighter plain image,
# and the separability probe confused it with plain on one garment in six.
STYLES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sketch": sketch, "relief": relief, "poster": poster, "negative": negative, "halftone": halftone,
    "blur": blur, "stripes": stripes, "checker": checker, "mosaic": mosaic, "outline": outline,
}


def check_images(images: np.ndarray) -> np.ndarray:
    """The images as float32 (N, 32, 32) in [0, 1], or a ValueError naming what is wrong with them."""
    if not isinstance(images, np.ndarray) or not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"images must be a floating-point numpy array, got {type(images).__name__} "
                         f"of {getattr(images, 'dtype', 'no dtype')}")
    if images.ndim != 3 or images.shape[1:] != (SIZE, SIZE) or len(images) == 0:
        raise ValueError(f"images must have shape (N, {SIZE}, {SIZE}) with N >= 1, got {images.shape}")
    if np.isnan(images).any():
        raise ValueError(f"images hold {int(np.isnan(images).sum())} NaN values")
    if images.min() < 0.0 or images.max() > 1.0:
        raise ValueError(f"images must lie in [0, 1], got values in [{images.min()}, {images.max()}]")
    return images.astype(np.float32, copy=False)


def apply_style(name: str, images: np.ndarray) -> np.ndarray:
    """images (N, 32, 32) in [0, 1] -> the same images in style `name`, checked before they are styled."""
    if name not in STYLES:
        raise ValueError(f"unknown style {name!r}; known styles: {', '.join(STYLES)}")
    return STYLES[name](check_images(images))


# The separability probe: a linear classifier on grey-level co-occurrence matrices (the basis of Haralick's
# classical texture features), not a network on pixels. A linear model on raw pixels cannot tell
# posterized from plain cloth (per-pixel rounding is not linear), and a tiny CNN took 12 s on one CPU
# core and still scored only ~0.7; co-occurrences separate tone (poster, halftone, negative), edges
# (sketch, outline, relief) and texture (blur, mosaic, stripes, checker) in well under a second.
GREY_LEVELS = 8  # co-occurrence grid 8x8: poster's 3 levels and halftone's 2 each fill their own cells
# (rows down, columns right): one and two pixels apart, because stripes change every 2 rows and mosaic
# every 4 pixels, so a one-pixel offset alone mostly sees pairs inside a band or a tile.
OFFSETS = ((0, 1), (1, 0), (0, 2), (2, 0))
PROBE_STEPS = 300  # full-batch Adam steps; the convex fit has settled well before
PROBE_LEARNING_RATE = 0.1


def _co_occurrence(levels: np.ndarray, down: int, right: int) -> np.ndarray:
    """levels (N, H, W) integers in [0, GREY_LEVELS) -> (N, GREY_LEVELS ** 2): the share of pixel pairs
    (p, the pixel `down` rows below and `right` columns right of p) in each (level of p, level of partner)."""
    height, width = levels.shape[1:]
    first = levels[:, :height - down, :width - right].reshape(len(levels), -1)  # (N, pairs)
    second = levels[:, down:, right:].reshape(len(levels), -1)  # (N, pairs)
    cells = GREY_LEVELS ** 2
    offsets = np.arange(len(levels))[:, None] * cells  # (N, 1): each image counts into its own cells
    counts = np.bincount((offsets + first * GREY_LEVELS + second).ravel(), minlength=len(levels) * cells)
    return counts.reshape(len(levels), cells).astype(np.float32) / first.shape[1]


def texture_statistics(images: np.ndarray) -> np.ndarray:
    """images (N, 32, 32) in [0, 1] -> (N, len(OFFSETS) * GREY_LEVELS ** 2): square roots of the grey-level
    co-occurrence shares at each offset.

    Blind to where the garment is, so the probe judges the style, not the garment. The square root (the
    Hellinger embedding of a histogram) lifts the rare pairs that carry a style, such as edges, next to
    the background pairs that fill most of an image; standardizing each cell instead blew up cells that
    only a few training images fill, and cost a few points of accuracy."""
    levels = np.minimum((images * GREY_LEVELS).astype(np.int64), GREY_LEVELS - 1)  # (N, 32, 32); 1.0 -> top
    shares = [_co_occurrence(levels, down, right) for down, right in OFFSETS]
    return np.sqrt(np.concatenate(shares, axis=1))


def _split_halves(images_by_style: dict[str, np.ndarray], seed: int) -> tuple[np.ndarray, ...]:
    """(train features, train labels, test features, test labels); features (M, F), labels (M,).

    Each style's images are split by one seeded permutation of their indices, so when the style sets are
    the same garments styled differently, a test garment is unseen in every style."""
    train_features, train_labels, test_features, test_labels = [], [], [], []
    for label, images in enumerate(images_by_style.values()):
        order = np.random.default_rng(seed).permutation(len(images))
        train, test = order[:len(images) // 2], order[len(images) // 2:]
        train_features.append(texture_statistics(images[train]))
        train_labels.append(np.full(len(train), label))
        test_features.append(texture_statistics(images[test]))
        test_labels.append(np.full(len(test), label))
    return tuple(map(np.concatenate, (train_features, train_labels, test_features, test_labels)))


def _fit_linear_probe(features: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.nn.Linear:
    """features (M, F), labels (M,) -> a logistic regression fitted to them.

    The weights start at zero and every step uses the whole set, so the fit involves no randomness."""
    classifier = torch.nn.Linear(features.shape[1], classes)
    torch.nn.init.zeros_(classifier.weight)
    torch.nn.init.zeros_(classifier.bias)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=PROBE_LEARNING_RATE)
    for _ in range(PROBE_STEPS):
        loss = F.cross_entropy(classifier(features), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return classifier


def style_separability(images_by_style: dict[str, np.ndarray], seed: int) -> float:
    """Accuracy in [0, 1] of a logistic regression that names each held-out image's style from its
    `texture_statistics`, trained on the other half of every style's images.

    1 means every style is told apart from every other; 1 / len(images_by_style) is chance, what
    indistinguishable sets score. The seed only chooses the halves, so the result is deterministic."""
    if len(images_by_style) < 2:
        raise ValueError(f"separability needs at least two styles, got {list(images_by_style)}")
    checked = {name: check_images(images) for name, images in images_by_style.items()}
    for name, images in checked.items():
        if len(images) < 2:
            raise ValueError(f"style {name!r} has {len(images)} image: at least 2 are needed, one per half")
    train_features, train_labels, test_features, test_labels = map(torch.from_numpy, _split_halves(checked, seed))
    threads = torch.get_num_threads()
    # One thread: a fit this small gains nothing from more, and on two busy cores their waiting made the
    # probe take 13 s instead of 0.5 s. The caller's setting is put back.
    torch.set_num_threads(1)
    try:
        classifier = _fit_linear_probe(train_features, train_labels, len(checked))
        with torch.no_grad():
            predicted = classifier(test_features).argmax(dim=1)  # (M,)
    finally:
        torch.set_num_threads(threads)
    return (predicted == test_labels).float().mean().item()
