"""A style LoRA from a user's exemplar images: the vision pipeline's generator, outside the pipeline.

Exemplars must look like the images the generator was trained on: 32x32, 8-bit gray (PIL mode "L").
Anything else is refused by name before any model is loaded, since a silently resized or converted
image would give a condition the generator never saw."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from safetensors.torch import save_file

from condpdiff.artifacts import CONDITION_TEXTS, LAYOUTS, GeneratorFiles
from condpdiff.config import VisionParams
from condpdiff.generator import load_generator
from condpdiff.lora import unflatten_vector
from condpdiff.vision.data import SIZE


class ExemplarError(ValueError):
    """An exemplar image the style generator cannot read as a condition."""


def read_exemplars(paths: list[Path]) -> torch.Tensor:
    """PNG (or any PIL format) files -> (N, 1, 32, 32) in [-1, 1]; a missing, unreadable, wrongly sized or
    non-gray file is an ExemplarError naming it."""
    if not paths:
        raise ExemplarError("no exemplar images given")
    images = []
    for path in map(Path, paths):
        if not path.is_file():
            raise ExemplarError(f"{path}: no such file")
        try:
            with Image.open(path) as image:
                image.load()
        except (UnidentifiedImageError, OSError) as error:
            raise ExemplarError(f"{path}: not a readable image ({error})") from None
        if image.size != (SIZE, SIZE) or image.mode != "L":
            raise ExemplarError(f"{path}: {image.size[0]}x{image.size[1]} mode {image.mode}; the generator reads "
                                f"{SIZE}x{SIZE} 8-bit gray images (mode L)")
        images.append(torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).reshape(1, SIZE, SIZE))
    return torch.stack(images).float() / 127.5 - 1


def write_style_adapters(params: VisionParams, outputs: Path, exemplars: torch.Tensor, samples: int, seed: int,
                         out: Path) -> list[Path]:
    """`samples` LoRA folders (adapter_config.json + adapter_model.safetensors, peft's layout) for the style
    the exemplars show, from the generator in the vision pipeline's `outputs` folder."""
    from peft import LoraConfig

    from condpdiff.lora import read_layouts
    from condpdiff.vision.features import condition_encoder, style_condition

    record = json.loads((outputs / "conditions" / CONDITION_TEXTS).read_text())
    cfg = params.vision.condition
    encoder = condition_encoder(cfg)
    if encoder.name != record["encoder"]:
        raise ValueError(f"the generator was trained on {record['encoder']} features, not {encoder.name}")
    condition = style_condition(encoder, exemplars)
    generator = load_generator(GeneratorFiles.from_outputs(outputs / "corpus", outputs / "normalized",
                                                           outputs / "autoencoder", outputs / "conditions",
                                                           outputs / "diffusion"))
    layouts, _, _ = read_layouts(outputs / "corpus" / LAYOUTS)
    layout = next(iter(layouts.values()))  # every style shares the base model's layout
    g = params.generate
    vectors = generator.generate(condition, None, layout.length, samples, g.sampler.value, g.inference_steps, seed,
                                 g.guidance)
    lora = params.vision.lora
    folders = []
    for index, vector in enumerate(vectors):
        folder = Path(out) / f"style_lora_{index}"
        folder.mkdir(parents=True, exist_ok=True)
        LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=0.0,
                   target_modules=lora.target_modules).save_pretrained(str(folder))
        save_file(unflatten_vector(vector, layout), str(folder / "adapter_model.safetensors"))
        folders.append(folder)
    return folders
