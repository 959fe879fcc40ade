"""How much of "recognised" is the judge? The base stage's classifier on real Fashion-MNIST test images under
fixed, mild corruptions.

    python benchmarks/vision_judge_robustness.py --base outputs/vision/base

The base stage's check labels generated samples with a small CNN trained on clean real images. Generated
samples carry noise, blur and patch-grid artifacts that real images lack; if the classifier's accuracy falls
under such corruptions of *real* images, a low recognition rate says as much about the judge as about the
generator. Prints one JSON line per corruption: accuracy, per-class accuracy (t-shirt .. ankle boot) and how
many of the 10,000 test images it labels "shirt" (the class a confused judge falls back on).
"""
import argparse
import json
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from scipy import ndimage

from condpdiff.config import load_params
from condpdiff.vision.backbone import load_base
from condpdiff.vision.classifier import predict
from condpdiff.vision.data import CLASSES, load_split
from condpdiff.vision.imagesets import to_model_range

SEED = 0
SHIRT = CLASSES.index("shirt")
BLUR_RADIUS = 2  # pixels each side of the centre: a 5-tap kernel


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """scipy's Gaussian blur (as the blur style uses) of each image (B, 1, H, W): 5 taps, edges replicated."""
    blurred = ndimage.gaussian_filter(images.numpy(), sigma=(0, 0, sigma, sigma), mode="nearest",
                                      truncate=BLUR_RADIUS / sigma)
    return torch.from_numpy(blurred)


def corruptions(generator: torch.Generator) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Images in [-1, 1] -> corrupted images in [-1, 1]; noise drawn from `generator`."""
    def noise(sigma: float) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda images: (images + sigma * torch.randn(images.shape, generator=generator)).clamp(-1, 1)

    return {"clean": lambda images: images, "gaussian noise 0.1": noise(0.1), "gaussian noise 0.2": noise(0.2),
            "blur sigma 0.7": lambda images: gaussian_blur(images, 0.7),
            "blur sigma 1.0": lambda images: gaussian_blur(images, 1.0),
            "pixelate 2x2": lambda images: F.interpolate(F.avg_pool2d(images, 2), scale_factor=2, mode="nearest"),
            "contrast 0.7": lambda images: (images + 1) * 0.7 - 1}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default="vision/params.yaml")
    parser.add_argument("--base", type=Path, default=Path("outputs/vision/base"), help="a base stage's folder")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params(args.params)
    _, _, classifier = load_base(args.base)
    test, test_labels = load_split(Path(params.vision.data.folder), "test")
    images, labels = to_model_range(test), torch.from_numpy(test_labels)
    for name, corrupt in corruptions(torch.Generator().manual_seed(SEED)).items():
        predicted = predict(classifier, corrupt(images))
        right = (predicted == labels).float()
        print(json.dumps({"corruption": name, "images": len(labels), "accuracy": round(right.mean().item(), 3),
                          "accuracy_per_class": [round(right[labels == c].mean().item(), 2)
                                                 for c in range(len(CLASSES))],
                          "labelled_shirt": int((predicted == SHIRT).sum())}), flush=True)


if __name__ == "__main__":
    main()
