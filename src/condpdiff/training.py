"""Training the generator: the one path that the stages, the ablations and later studies share.

    normalize -> fit_autoencoder -> encode_latents -> fit_denoiser

The autoencoder and diffusion stages call the halves (`autoencoder.fit_autoencoder`,
`diffusion.fit_denoiser`); `train_generator` composes them in one process, for the ablations and
later studies. One seeding rule, kept by the halves: each seeds torch with the run's seed right
before it builds its network (so the initial weights depend on the seed alone, not on what ran
before), and its training loop draws batches and noise from a generator seeded with the same value.
"""
from __future__ import annotations

import torch

from condpdiff.autoencoder import Autoencoder, encode_latents, fit_autoencoder
from condpdiff.config import Params
from condpdiff.diffusion import fit_denoiser
from condpdiff.generator import Generator
from condpdiff.normalize import fit_normalizer


def train_generator(params: Params, corpus: torch.Tensor, task_index: torch.Tensor, task_conditions: torch.Tensor,
                    learned_condition: bool, autoencoder: Autoencoder | None = None) -> Generator:
    """The whole generator from a stacked corpus (M, L), its task ids (M,) in 0..T-1 and one condition
    per task (T, D): row t of `task_conditions` is the condition of task id t.

    A given `autoencoder` (trained on the same normalized corpus) is reused instead of trained.
    """
    num_tasks = len(task_conditions)
    normalizer = fit_normalizer(params.norm, corpus, task_index, num_tasks)
    normalized = normalizer.transform(corpus, task_index)
    if autoencoder is None:
        autoencoder = fit_autoencoder(params.autoencoder, normalized, params.seed)
    latents = encode_latents(autoencoder, normalized)
    denoiser, scheduler, latent_scale = fit_denoiser(params.diffusion, latents, task_conditions[task_index],
                                                     learned_condition, params.seed)
    return Generator(autoencoder, denoiser, dict(scheduler.config), latent_scale, normalizer)
