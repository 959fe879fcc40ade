"""Seeded generation: same seed, same adapter bytes; another seed, other bytes."""
import torch

from condpdiff.autoencoder import Autoencoder, AutoencoderSpec
from condpdiff.config import BaseModelConfig, LoraConfig, Norm
from condpdiff.denoiser import Denoiser, DenoiserSpec
from condpdiff.diffusion import make_scheduler
from condpdiff.generator import Generator
from condpdiff.lora import build_peft_model, model_layout, write_adapter
from condpdiff.normalize import fit_normalizer


def _generator(length: int) -> Generator:
    torch.manual_seed(0)
    autoencoder = Autoencoder(AutoencoderSpec(length=length, channels=(4, 8), latent_channels=2, stride=4)).eval()
    denoiser = Denoiser(DenoiserSpec(in_channels=2, condition_dim=3, channels=(8, 16), embed_dim=16)).eval()
    corpus = torch.randn(6, length) * 0.01
    normalizer = fit_normalizer(Norm.task, corpus, torch.tensor([0, 0, 0, 1, 1, 1]), 2)
    return Generator(autoencoder, denoiser, dict(make_scheduler(20, "linear").config), 1.0, normalizer)


def test_same_seed_same_adapter_bytes_other_seed_other_bytes(tmp_path):
    model = build_peft_model(BaseModelConfig(), LoraConfig(), 2, seed=0)
    layout = model_layout(model)
    generator = _generator(layout.length + 5)  # a padded common length
    condition = torch.tensor([1.0, 0.0, 0.0])
    files = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        vectors = generator.generate(condition, stats_index=1, length=layout.length, samples=2,
                                     sampler="ddim", inference_steps=5, seed=seed)
        assert vectors.shape == (2, layout.length) and torch.isfinite(vectors).all()
        write_adapter(model, vectors[0], layout, tmp_path / name)
        files[name] = (tmp_path / name / "adapter_model.safetensors").read_bytes()
    assert files["a"] == files["b"]
    assert files["a"] != files["c"]


def test_ddpm_sampler_is_deterministic_too():
    generator = _generator(64)
    condition = torch.tensor([0.0, 1.0, 0.0])
    one = generator.generate(condition, 0, 60, 3, "ddpm", 20, seed=1)
    two = generator.generate(condition, 0, 60, 3, "ddpm", 20, seed=1)
    assert torch.equal(one, two) and one.shape == (3, 60)
    assert not torch.equal(one[0], one[1])  # samples in a batch differ
