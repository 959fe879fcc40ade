"""The image styles on real Fashion-MNIST garments: each is a deterministic, visible transform, the styles
differ from each other, and the separability probe both tells them apart and reports chance when it should."""
import itertools

import numpy as np
import pytest
import torch

from condpdiff.vision.data import load_split
from condpdiff.vision.styles import STYLES, apply_style, style_separability
from conftest import REPO

IMAGES_PER_SET = 200  # per style: about 0.3 s for a probe over all styles + plain
# Mean absolute pixel change below which a style (or the gap between two styles) counts as no change.
# Measured on the first 200 test images: the subtlest style, poster, changes plain images by 0.050 and the
# closest pair, blur and mosaic, differs by 0.053; a style that returns its input, or two names bound to
# one function, gives 0.
MINIMUM_CHANGE = 0.03
# Measured 0.974-0.989 for all styles + plain: seeds 0-3 on these images, seed 0 on three other sets of 200.
MINIMUM_SEPARABILITY = 0.93
# Chance is 0.5 for two sets; measured 0.43-0.58 over 33 pairs of one style on two sets of garments
# (100 test images a set, so one standard deviation is 0.035).
MAXIMUM_CHANCE_SEPARABILITY = 0.7


@pytest.fixture(scope="module")
def garments() -> np.ndarray:
    """(400, 32, 32) float32 in [0, 1]: the first 400 Fashion-MNIST test images."""
    folder = REPO / "data" / "fashion-mnist"
    if not (folder / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.fail("data/fashion-mnist is missing: run `make setup` (it pulls data/fashion-mnist)")
    images, _ = load_split(folder, "test")
    return images[:2 * IMAGES_PER_SET]


@pytest.fixture(scope="module")
def styled(garments) -> dict[str, np.ndarray]:
    """{style: (200, 32, 32)}: the first 200 garments in every style."""
    return {name: apply_style(name, garments[:IMAGES_PER_SET]) for name in STYLES}


@pytest.mark.parametrize("name", list(STYLES))
def test_style_is_deterministic_and_keeps_shape_dtype_and_range(name, garments):
    plain = garments[:IMAGES_PER_SET]
    first, second = apply_style(name, plain.copy()), apply_style(name, plain.copy())
    assert np.array_equal(first, second)
    assert first.shape == plain.shape and first.dtype == np.float32
    assert not np.isnan(first).any() and first.min() >= 0.0 and first.max() <= 1.0


@pytest.mark.parametrize("name", list(STYLES))
def test_style_treats_each_image_alone(name, garments):
    """A filter that also ran across the batch axis would mix neighbouring garments."""
    batch = apply_style(name, garments[:5])
    alone = np.concatenate([apply_style(name, garments[index:index + 1]) for index in range(5)])
    assert np.array_equal(batch, alone)


@pytest.mark.parametrize("name", list(STYLES))
def test_style_changes_the_images(name, garments, styled):
    change = np.abs(styled[name] - garments[:IMAGES_PER_SET]).mean()
    assert change > MINIMUM_CHANGE, f"{name} changes plain images by only {change:.3f}"


def test_styles_differ_pairwise(styled):
    for first, second in itertools.combinations(STYLES, 2):
        gap = np.abs(styled[first] - styled[second]).mean()
        assert gap > MINIMUM_CHANGE, f"{first} and {second} differ by only {gap:.3f}"


def test_separability_tells_every_style_and_plain_apart(garments, styled):
    sets = {"plain": garments[:IMAGES_PER_SET], **styled}
    threads = torch.get_num_threads()
    accuracy = style_separability(sets, seed=0)
    assert accuracy >= MINIMUM_SEPARABILITY
    assert style_separability(sets, seed=0) == accuracy
    assert torch.get_num_threads() == threads  # the probe's single thread is not left behind


@pytest.mark.parametrize("name", ["plain", "sketch", "halftone"])
def test_separability_is_near_chance_for_one_style_twice(name, garments):
    """Copies of one set, and one style on two sets of garments: nothing to tell apart."""
    first, second = garments[:IMAGES_PER_SET], garments[IMAGES_PER_SET:]
    if name != "plain":
        first, second = apply_style(name, first), apply_style(name, second)
    assert style_separability({"a": first, "b": first.copy()}, seed=0) <= MAXIMUM_CHANCE_SEPARABILITY
    assert style_separability({"a": first, "b": second}, seed=0) <= MAXIMUM_CHANCE_SEPARABILITY


def test_unknown_style_is_named_with_the_known_ones(garments):
    with pytest.raises(ValueError, match=r"'watercolour'.*sketch.*outline"):
        apply_style("watercolour", garments[:2])


@pytest.mark.parametrize("images, problem", [
    (np.zeros((32, 32), dtype=np.float32), r"shape \(N, 32, 32\)"),
    (np.zeros((2, 28, 28), dtype=np.float32), r"shape \(N, 32, 32\)"),
    (np.zeros((0, 32, 32), dtype=np.float32), r"N >= 1"),
    (np.full((2, 32, 32), np.nan, dtype=np.float32), "NaN"),
    (np.full((2, 32, 32), 255.0, dtype=np.float32), r"\[0, 1\]"),
    (np.full((2, 32, 32), -0.5, dtype=np.float32), r"\[0, 1\]"),
    (np.zeros((2, 32, 32), dtype=np.uint8), "floating-point"),
])
def test_bad_images_are_refused_with_the_problem_named(images, problem):
    with pytest.raises(ValueError, match=problem):
        apply_style("sketch", images)


def test_separability_refuses_a_single_style_or_a_single_image(garments):
    with pytest.raises(ValueError, match="at least two styles"):
        style_separability({"plain": garments}, seed=0)
    with pytest.raises(ValueError, match="'blur' has 1 image"):
        style_separability({"plain": garments, "blur": garments[:1]}, seed=0)
    with pytest.raises(ValueError, match="NaN"):
        style_separability({"plain": garments, "broken": np.full_like(garments, np.nan)}, seed=0)
