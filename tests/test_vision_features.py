"""The vision branch's image features and scores. The Inception costs ~0.1-0.3 s per image on a CPU,
so these tests run it on a few dozen Fashion-MNIST images at most, each through one shared encoder."""
from pathlib import Path

import numpy as np
import pytest
import torch
from cleanfid import fid as cleanfid
from PIL import Image

from condpdiff.vision.data import CLASSES, load_split
from condpdiff.vision.features import InceptionFeatures, fid, kid, make_image_encoder, polynomial_mmd
from condpdiff.vision.imagesets import to_uint8

FASHION_MNIST = "data/fashion-mnist"

# Measured once from the shipped FID Inception on `ramp_image()`: a randomly initialised network,
# or another pretrained one, cannot give these numbers.
PINNED_FIRST = [1.0617482662200928, 0.0302708949893713, 0.0, 0.0488295778632164, 0.0, 0.038421399891376495]
PINNED_NORM = 17.641029357910156


@pytest.fixture(scope="module")
def inception() -> InceptionFeatures:
    return InceptionFeatures()


@pytest.fixture(scope="module")
def fashion_test() -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 1, 32, 32) in [-1, 1], labels (N,)) of the Fashion-MNIST test split."""
    folder = Path(__file__).resolve().parents[1] / FASHION_MNIST
    if not (folder / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"{folder} is missing: run `make setup` (it pulls data/fashion-mnist)")
    images, labels = load_split(folder, "test")
    return torch.from_numpy(images * 2 - 1).unsqueeze(1), torch.from_numpy(labels)


@pytest.fixture
def global_numpy_random():
    """clean-fid's kernel_distance draws from the global np.random: seed it, and restore it after."""
    state = np.random.get_state()
    yield np.random
    np.random.set_state(state)


def ramp_image() -> torch.Tensor:
    """(1, 1, 32, 32): a product of two ramps, deterministic and needing no data file."""
    ramp = torch.linspace(-1, 1, 32)
    return (ramp.view(1, 1, 1, 32) * ramp.view(1, 1, 32, 1)).contiguous()


def of_class(fashion_test, name: str, count: int, skip: int = 0) -> torch.Tensor:
    images, labels = fashion_test
    return images[labels == CLASSES.index(name)][skip:skip + count]


@pytest.mark.slow  # the Inception (or CLIP) on CPU: seconds
def test_feature_extractor_is_the_pretrained_inception(inception):
    features = inception(ramp_image())
    assert features.shape == (1, 2048) and features.dtype == torch.float32
    torch.testing.assert_close(features[0, :6], torch.tensor(PINNED_FIRST), rtol=1e-4, atol=1e-5)
    assert features.norm().item() == pytest.approx(PINNED_NORM, rel=1e-4)


@pytest.mark.slow  # the Inception (or CLIP) on CPU: seconds
def test_in_memory_features_equal_clean_fid_folder_features(inception, fashion_test, tmp_path):
    """Our path (8-bit pixels, clean resize, Inception) against clean-fid's own: the same images as
    gray PNGs, read, converted to RGB and resized by `get_folder_features`."""
    images = torch.cat([fashion_test[0][:3], ramp_image()])  # (4, 1, 32, 32)
    for index, pixels in enumerate(to_uint8(images)):
        Image.fromarray(pixels[:, :, 0]).save(tmp_path / f"{index:03d}.png")
    expected = cleanfid.get_folder_features(str(tmp_path), inception.from_clean_pixels, num_workers=0,
                                            batch_size=4, device=torch.device("cpu"), mode="clean", verbose=False)
    np.testing.assert_allclose(inception(images).numpy(), expected, rtol=0, atol=1e-4)


def test_kid_mean_equals_clean_fid_kernel_distance(global_numpy_random):
    generator = np.random.default_rng(0)
    a = generator.normal(size=(30, 16))
    b = generator.normal(size=(25, 16)) + 0.3
    global_numpy_random.seed(7)
    expected = cleanfid.kernel_distance(a, b, num_subsets=5, max_subset_size=10)
    mean, std = kid(a, b, subsets=5, subset_size=10, seed=7)
    assert isinstance(mean, float) and isinstance(std, float) and std > 0
    assert mean == pytest.approx(expected, rel=1e-10)


def test_kid_of_one_whole_subset_is_the_unbiased_estimator_with_no_spread():
    """subset_size = N and one subset: every row is drawn, so no sampling is left to agree on."""
    generator = np.random.default_rng(1)
    a, b = generator.normal(size=(12, 8)), generator.normal(size=(12, 8)) + 1.0
    expected = cleanfid.kernel_distance(a, b, num_subsets=1, max_subset_size=12)
    mean, std = kid(torch.from_numpy(a), torch.from_numpy(b), subsets=1, subset_size=12, seed=123)
    assert mean == pytest.approx(expected, rel=1e-10) and std == 0.0
    assert polynomial_mmd(a, b) == pytest.approx(expected, rel=1e-10)


def test_kid_needs_two_images_in_each_set():
    with pytest.raises(ValueError, match="at least 2 images"):
        kid(np.zeros((1, 4)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="at least 2 images"):
        kid(np.zeros((5, 4)), np.zeros((1, 4)))


@pytest.mark.slow  # the Inception (or CLIP) on CPU: seconds
def test_kid_between_halves_of_one_set_is_lower_than_against_another(inception, fashion_test):
    trousers = inception(of_class(fashion_test, "trouser", 24))  # (24, 2048)
    bags = inception(of_class(fashion_test, "bag", 12))  # (12, 2048)
    within, _ = kid(trousers[:12], trousers[12:], subsets=20, subset_size=12, seed=0)
    across, _ = kid(trousers, bags, subsets=20, subset_size=12, seed=0)
    assert abs(within) < 0.2 * across, (within, across)


def test_fid_is_zero_for_one_set_and_the_squared_shift_for_a_shifted_copy():
    """A shift leaves the covariance alone, so FID is exactly |shift|^2 (small D: sqrtm stays cheap)."""
    features = np.random.default_rng(2).normal(size=(40, 6))
    shift = np.array([0.5, -1.0, 0.0, 0.0, 2.0, 0.0])
    assert fid(features, features) == pytest.approx(0.0, abs=1e-6)
    assert fid(features, features + shift) == pytest.approx(float(shift @ shift), rel=1e-6)


@pytest.mark.parametrize("sizes", [(30, 25, 8), (12, 40, 64)])
def test_fid_equals_clean_fid_fid_from_feats(sizes):
    """The singular-value form equals clean-fid's sqrtm form: with more images than features (sqrtm exact)
    and with fewer (singular covariances, the case of the pipeline)."""
    from cleanfid import fid as cleanfid

    count_a, count_b, dim = sizes
    generator = np.random.default_rng(3)
    a = generator.normal(size=(count_a, dim))
    b = generator.normal(size=(count_b, dim)) * 1.5 + 0.3
    assert fid(a, b) == pytest.approx(float(cleanfid.fid_from_feats(a, b)), rel=1e-6)


def test_resnet18_encoder_from_a_weights_file(tmp_path):
    import torchvision

    weights = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    encoder = make_image_encoder("resnet18", str(weights))
    features = encoder(torch.rand(3, 1, 32, 32) * 2 - 1)
    assert encoder.name == "resnet18" and encoder.dim == 512
    assert features.shape == (3, 512) and torch.isfinite(features).all()


@pytest.mark.parametrize("kind, model_name", [("resnet18", None), ("open_clip", "ViT-B-32")])
def test_missing_weights_file_is_named_not_downloaded(kind, model_name, tmp_path):
    missing = str(tmp_path / "no-such-weights.pt")
    with pytest.raises(FileNotFoundError, match="no-such-weights.pt"):
        make_image_encoder(kind, missing, model_name=model_name)
    with pytest.raises(FileNotFoundError, match="weights=None"):
        make_image_encoder(kind, None, model_name=model_name)


def test_missing_inception_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        make_image_encoder("inception", str(tmp_path / "absent.pt"))


def test_unknown_encoder_kind_is_refused():
    with pytest.raises(ValueError, match="unknown image encoder"):
        make_image_encoder("vgg16")


@pytest.mark.slow  # the Inception (or CLIP) on CPU: seconds
def test_open_clip_encoder_from_a_local_checkpoint(tmp_path):
    """ViT-S-32-alt, a small CLIP (43 M parameters, a 170 MB file): ~4 s, 10 s on a cold import."""
    import open_clip

    weights = tmp_path / "clip.pt"
    torch.save(open_clip.create_model("ViT-S-32-alt", pretrained=None).state_dict(), weights)
    encoder = make_image_encoder("open_clip", str(weights), model_name="ViT-S-32-alt")
    features = encoder(torch.rand(2, 1, 32, 32) * 2 - 1)
    assert encoder.name == "open_clip:ViT-S-32-alt" and encoder.dim == 256
    assert features.shape == (2, 256) and torch.isfinite(features).all()
