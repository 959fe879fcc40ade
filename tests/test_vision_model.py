"""The vision branch's model code on tiny shapes: LoRA on PixArt's attention trains only the LoRA, the
corpus vector round-trips through the text branch's layout, the config refuses bad input, and a
PixArt-alpha folder (a tiny random one, built here: no download) runs through the same stages' code."""
import dataclasses
import json

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from condpdiff import config
from condpdiff.config import ConfigError, Sampler, load_params
from condpdiff.lora import flatten_model, load_vector, model_layout
from condpdiff.vision import styles
from condpdiff.vision.backbone import (Backbone, base_captions, build_base, load_base, sample_images, save_base,
                                       train_style_lora)
from condpdiff.vision.classifier import Classifier, recognition
from condpdiff.vision.imagesets import load_style_set, save_style_set
from condpdiff.vision.pixart import Captions, build_transformer, denoising_loss, inject_style_lora, train_denoiser
from conftest import REPO

TINY = REPO / "profiles" / "vision-tiny.yaml"


def tiny_captions(width: int = 384, tokens: int = 4) -> Captions:
    generator = torch.Generator().manual_seed(0)
    return Captions(torch.randn(10, tokens, width, generator=generator), torch.ones(10, tokens),
                    torch.zeros(tokens, width), torch.ones(tokens))


def images(count: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(count, 1, 32, 32, generator=generator) * 2 - 1, torch.arange(count) % 10


def test_config_styles_name_the_style_functions():
    assert config.STYLES == tuple(styles.STYLES)


def test_lora_on_pixart_attention_trains_only_the_lora_weights():
    model = build_transformer(hidden=32, heads=2, layers=2, patch_size=4, caption_channels=384, image_size=32, seed=0)
    model = inject_style_lora(model, r=2, alpha=2, target_modules=r".*attn[12]\.(to_q|to_k|to_v|to_out\.0)")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    lora_names = {name for name in before if "lora_" in name}
    assert len(lora_names) == 2 * 2 * 4 * 2  # layers x attentions x projections x (A, B)
    x, labels = images()
    backbone = Backbone(model, build_base(load_params(TINY).vision.base, tiny_captions(), 0).scheduler, None)
    collect = dataclasses.replace(load_params(TINY).vision.collect, steps=3, batch_size=4, lr=1e-2)
    checkpoints = []
    train_style_lora(backbone, tiny_captions(), {"train": x, "train_labels": labels}, collect, caption_dropout=0.5,
                     seed=0, on_checkpoint=checkpoints.append)
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed == lora_names and checkpoints == [1, 2, 3]


def test_min_snr_weighting_lowers_only_the_nearly_clean_timesteps_errors():
    """gamma above every timestep's SNR is the plain loss; a small gamma weighs the low-noise timesteps
    (SNR > gamma) down and leaves the noisy ones (SNR <= gamma) at weight 1."""
    model = build_transformer(32, 2, 1, 4, 384, 32, 0)
    scheduler = build_base(load_params(TINY).vision.base, tiny_captions(), 0).scheduler
    x, labels = images(16)
    states, mask = tiny_captions().take(labels)
    snr = scheduler.alphas_cumprod / (1 - scheduler.alphas_cumprod)

    def loss(gamma: float) -> float:
        with torch.no_grad():
            return denoising_loss(model, scheduler, x, states, mask, torch.Generator().manual_seed(3), gamma).item()

    plain = loss(0.0)
    assert loss(float(snr.max()) * 2) == pytest.approx(plain, rel=1e-6)
    assert 0 < loss(1.0) < plain


def test_the_cosine_schedule_halves_the_second_of_two_steps():
    """Both runs see the same batches and gradients, so Adam moves the same way; over 2 steps the cosine
    schedule's second step runs at half the rate (0.5 * (1 + cos(pi / 2))), the constant one's at full."""
    x, labels = images()
    scheduler = build_base(load_params(TINY).vision.base, tiny_captions(), 0).scheduler

    def moves(schedule: str, steps: int = 2) -> list[torch.Tensor]:
        model = build_transformer(32, 2, 1, 4, 384, 32, 0)
        weights = [torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()]
        train_denoiser(model, scheduler, x, labels, tiny_captions(), steps=steps, batch_size=4, lr=1e-3,
                       caption_dropout=0.0, seed=0, lr_schedule=schedule, on_checkpoint=lambda step: weights.append(
                           torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()))
        return [after - before for before, after in zip(weights, weights[1:])]

    constant, cosine = moves("constant"), moves("cosine")
    torch.testing.assert_close(cosine[0], constant[0])
    torch.testing.assert_close(cosine[1], 0.5 * constant[1], rtol=1e-4, atol=1e-7)
    assert moves("cosine", steps=0) == []  # a pretrained base left as it is: no division by 0 steps
    with pytest.raises(ValueError, match="LrSchedule"):
        moves("linear")


def test_the_initial_lora_does_not_depend_on_the_global_random_state():
    """Two processes reached injection with different global streams: their collect stages trained
    different LoRAs from the same seeds (the vision corpus changed from run to run)."""
    initial = []
    for global_seed in (1, 2):
        model = build_transformer(32, 2, 1, 4, 384, 32, 0)
        torch.manual_seed(global_seed)
        inject_style_lora(model, 2, 2, r".*attn[12]\.(to_q|to_k|to_v|to_out\.0)")
        initial.append(flatten_model(model, model_layout(model)))
        assert torch.equal(torch.rand(1), torch.rand(1, generator=torch.Generator().manual_seed(global_seed)))
    assert initial[0].abs().sum() > 0 and torch.equal(initial[0], initial[1])


def test_a_lora_vector_round_trips_and_zeros_are_the_base_model():
    model = build_transformer(32, 2, 1, 4, 384, 32, 0)
    backbone = Backbone(model, build_base(load_params(TINY).vision.base, tiny_captions(), 0).scheduler, None)
    inject_style_lora(model, 2, 2, r".*attn[12]\.(to_q|to_k|to_v|to_out\.0)")
    layout = model_layout(model)
    vector = torch.randn(layout.length, generator=torch.Generator().manual_seed(2)) * 0.1
    load_vector(model, vector, layout)
    assert torch.equal(flatten_model(model, layout), vector)
    labels = torch.arange(2)
    with_lora = sample_images(backbone, tiny_captions(), labels, "ddpm", steps=2, guidance=1.0, seed=0)
    load_vector(model, torch.zeros(layout.length), layout)
    plain = sample_images(backbone, tiny_captions(), labels, "ddpm", steps=2, guidance=1.0, seed=0)
    base = build_transformer(32, 2, 1, 4, 384, 32, 0)
    reference = sample_images(Backbone(base, backbone.scheduler, None), tiny_captions(), labels, "ddpm", 2, 1.0, 0)
    assert with_lora.shape == (2, 1, 32, 32) and not torch.allclose(with_lora, plain)
    assert torch.allclose(plain, reference, atol=1e-5)  # a zero LoRA leaves the model as it was


@pytest.mark.parametrize("sampler", list(Sampler))
def test_seeded_sampling_repeats_and_the_seed_matters(sampler):
    backbone = Backbone(build_transformer(32, 2, 1, 4, 384, 32, 0),
                        build_base(load_params(TINY).vision.base, tiny_captions(), 0).scheduler, None)
    first, again, other = (sample_images(backbone, tiny_captions(), torch.arange(3), sampler, 2, 2.0, seed=seed)
                           for seed in (5, 5, 6))
    assert torch.equal(first, again) and not torch.allclose(first, other)


def test_the_two_samplers_step_the_same_schedule_differently():
    backbone = Backbone(build_transformer(32, 2, 1, 4, 384, 32, 0),
                        build_base(load_params(TINY).vision.base, tiny_captions(), 0).scheduler, None)
    ancestral, deterministic = backbone.pipeline(Sampler.ddpm).scheduler, backbone.pipeline(Sampler.ddim).scheduler
    assert isinstance(ancestral, DDPMScheduler) and isinstance(deterministic, DDIMScheduler)
    assert torch.equal(ancestral.alphas_cumprod, deterministic.alphas_cumprod)  # the schedule the base trained on
    drawn = [sample_images(backbone, tiny_captions(), torch.arange(3), sampler, 2, 2.0, seed=5) for sampler in Sampler]
    assert not torch.allclose(*drawn)


@pytest.mark.parametrize("override, message", [
    ("vision.data.styles=[sketch, watercolour]", "vision.data.styles"),
    ("vision.data.styles=[sketch]", "two or more"),
    ("vision.condition.encoder=resnet18", "vision.condition.weights"),
    ("vision.base.pretrained=no/such/folder", "vision.base.pretrained"),
    ("vision.score.kid_subset_size=1", "kid_subset_size"),
    ("vision.collect.keep_last=1000", "keep_last"),
    ("vision.base.hidden=many", "vision.base.hidden"),
    ("vision.base.min_snr_gamma=-1", "vision.base.min_snr_gamma"),
    ("vision.collect.min_snr_gamma=.nan", "vision.collect.min_snr_gamma"),
    ("vision.base.lr_schedule=linear", "vision.base.lr_schedule"),
])
def test_bad_vision_params_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_params(REPO / "vision" / "params.yaml", (override,))


def test_an_unknown_vision_key_is_an_error(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "vision" / "params.yaml").read_text().replace("  score:\n", "  score:\n    colour: red\n"))
    with pytest.raises(ConfigError, match="colour"):
        load_params(path)


def test_style_sets_refuse_an_empty_split_and_a_corrupt_file(tmp_path):
    x, labels = images(4)
    save_style_set(tmp_path / "empty.safetensors", {"train": x, "train_labels": labels, "select": x[:0],
                                                    "select_labels": labels[:0], "eval": x.clone(), "eval_labels": labels.clone()})
    with pytest.raises(ValueError, match="no select images"):
        load_style_set(tmp_path / "empty.safetensors")
    (tmp_path / "corrupt.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="corrupt"):
        load_style_set(tmp_path / "corrupt.safetensors")
    with pytest.raises(FileNotFoundError, match="missing"):
        load_style_set(tmp_path / "absent.safetensors")


def tiny_pixart_alpha(folder):
    """A random PixArt-alpha in diffusers' layout: T5 tokenizer (a 12-word vocabulary, no sentencepiece
    file), a 1-layer T5 encoder, a 2-level VAE (2x downscale), a 1-block transformer on 4 latent channels."""
    from diffusers import AutoencoderKL, DDPMScheduler, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    words = ["a", "photo", "of", "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
             "bag", "ankle", "boot"]
    tokenizer = T5Tokenizer(vocab=[("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0),
                                   *[(f"▁{w}", -1.0) for w in words]], extra_ids=0)
    torch.manual_seed(0)
    encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=32, d_ff=37, d_kv=8, num_layers=1,
                                      num_heads=4, relative_attention_num_buckets=8))
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1,
                        latent_channels=4, norm_num_groups=8, sample_size=16)
    transformer = PixArtTransformer2DModel(sample_size=8, in_channels=4, out_channels=4, patch_size=2, num_layers=1,
                                           num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
                                           caption_channels=32, use_additional_conditions=False,
                                           norm_type="ada_norm_single")
    for name, part in (("tokenizer", tokenizer), ("text_encoder", encoder), ("vae", vae),
                       ("transformer", transformer), ("scheduler", DDPMScheduler(num_train_timesteps=100))):
        part.save_pretrained(folder / name)


def test_pixart_alpha_weights_run_through_the_same_code(tmp_path):
    """vision.base.pretrained: T5 captions, the VAE's latents in training, PixArtAlphaPipeline sampling,
    LoRA on its attention, the flat vector, save and load: the stages' functions, on a tiny random model."""
    tiny_pixart_alpha(tmp_path / "pixart")
    base = dataclasses.replace(load_params(TINY).vision.base, pretrained=str(tmp_path / "pixart"))
    captions = base_captions(base)
    assert captions.states.shape == (10, base.caption_tokens, 32)
    backbone = build_base(base, captions, 0)
    assert backbone.vae is not None and backbone.resolution == 16
    x, labels = images(4)
    assert backbone.to_latents(x).shape == (4, 4, 8, 8)
    train_denoiser(backbone.transformer, backbone.scheduler, x, labels, captions, 2, 2, 1e-3, 0.1, 0,
                   backbone.to_latents)
    save_base(tmp_path / "base", backbone, captions, Classifier(), base.pretrained)
    loaded, loaded_captions, _ = load_base(tmp_path / "base")
    inject_style_lora(loaded.transformer, 2, 2, r".*attn[12]\.(to_q|to_k|to_v|to_out\.0)")
    layout = model_layout(loaded.transformer)
    assert layout.length == 8 * (2 * 16 + 16 * 2)  # 8 projections of width 16, LoRA A (2, 16) and B (16, 2)
    drawn = sample_images(loaded, loaded_captions, labels[:2], "ddpm", steps=2, guidance=2.0, seed=0)
    assert drawn.shape == (2, 1, 32, 32) and torch.isfinite(drawn).all()


def test_a_pretrained_folder_without_its_parts_is_named(tmp_path):
    (tmp_path / "pixart" / "transformer").mkdir(parents=True)
    base = dataclasses.replace(load_params(TINY).vision.base, pretrained=str(tmp_path / "pixart"))
    with pytest.raises(FileNotFoundError, match="no vae/ folder"):
        build_base(base, tiny_captions(32), 0)


class _FirstPixelLabeller(torch.nn.Module):
    """A stand-in judge whose label is the image's first pixel (rounded): the test chooses every label."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (B, 1, H, W) -> (B, 4) logits
        return torch.nn.functional.one_hot(images[:, 0, 0, 0].round().long(), 4).float()


def test_recognition_counts_per_class_and_a_class_never_asked_is_null_not_nan():
    asked = torch.tensor([0, 1, 2, 2])
    samples = torch.zeros(4, 1, 8, 8)
    samples[:, 0, 0, 0] = torch.tensor([0.0, 1.0, 1.0, 2.0])  # labelled 0, 1, 1, 2
    found = recognition(_FirstPixelLabeller(), samples, asked, classes=4)
    assert found["recognised"] == 0.75
    assert found["recognised_per_class"] == [1.0, 1.0, 0.5, None]
    assert found["confusion_asked_by_labelled"] == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    json.dumps(found, allow_nan=False)  # the base stage writes it to metrics/vision_base.json
