"""Scoring a style LoRA: sample images with it, Inception features, KID (and FID) against a style's
held-out images. One scorer serves collect (the best original on `select`), evaluate (every row of the
table, best-of-K on `select`, the score on `eval`) and the figures."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from condpdiff.config import ImageBaseConfig, ImageScoreConfig, StyleLoraConfig
from condpdiff.lora import Layout, load_vector, model_layout
from condpdiff.vision.backbone import Backbone, sample_images
from condpdiff.vision.features import InceptionFeatures, fid, kid
from condpdiff.vision.pixart import Captions, inject_style_lora


@dataclass(frozen=True)
class Score:
    kid: float
    kid_std: float  # over the KID subsets
    fid: float | None  # None where the image count makes FID meaningless (fewer than 2 per set)
    images: int  # generated images behind the number
    reference_images: int


class StyleScorer:
    """The base model with a LoRA slot, the captions and the Inception: vector in, score out."""

    def __init__(self, backbone: Backbone, captions: Captions, base: ImageBaseConfig, lora: StyleLoraConfig,
                 score: ImageScoreConfig, inception: InceptionFeatures | None = None):
        self.backbone, self.captions, self.base, self.score_cfg = backbone, captions, base, score
        inject_style_lora(backbone.transformer, lora.r, lora.alpha, lora.target_modules)
        self.layout: Layout = model_layout(backbone.transformer)
        self.inception = inception or InceptionFeatures()

    def images(self, vector: torch.Tensor, count: int, seed: int) -> torch.Tensor:
        """`count` images (every class in turn) drawn with the LoRA `vector` (zeros: the base model)."""
        load_vector(self.backbone.transformer, vector, self.layout)
        labels = torch.arange(count) % len(self.captions.states)
        return sample_images(self.backbone, self.captions, labels, self.base.sampler, self.base.sample_steps,
                             self.base.guidance, seed)

    def features(self, images: torch.Tensor) -> np.ndarray:
        return self.inception(images).numpy()

    def compare(self, features: np.ndarray, reference: np.ndarray, with_fid: bool, seed: int) -> Score:
        size = min(self.score_cfg.kid_subset_size, len(features), len(reference))
        mean, std = kid(features, reference, subsets=self.score_cfg.kid_subsets, subset_size=size, seed=seed)
        return Score(mean, std, fid(features, reference) if with_fid else None, len(features), len(reference))

    def score(self, vector: torch.Tensor, reference: np.ndarray, count: int, seed: int,
              with_fid: bool = False) -> tuple[Score, torch.Tensor]:
        images = self.images(vector, count, seed)
        return self.compare(self.features(images), reference, with_fid, seed), images

    def best_of(self, vectors: torch.Tensor, select: np.ndarray, seed: int) -> tuple[int, list[float]]:
        """The index of the vector whose images have the lowest KID on `select`, and every KID."""
        kids = [self.score(vector, select, self.score_cfg.select_images, seed)[0].kid for vector in vectors]
        return int(np.argmin(kids)), kids
