"""Stage conditions: each style's condition is the mean image feature of a few exemplar images of the
style, unit length. Training draws `draws` exemplar sets per style from its train images; generation
reads exemplars from `select`, images the generator never saw (a user's new images of the style)."""
import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from condpdiff.artifacts import CONDITION_TEXTS, CONDITIONS
from condpdiff.config import load_params
from condpdiff.conditions import hash_seed
from condpdiff.tracking import stage_run
from condpdiff.vision.features import condition_encoder, style_condition
from condpdiff.vision.imagesets import load_style_set, style_set_file


def exemplar_condition(encoder, images: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """The unit mean feature (D,) of `count` images drawn (seeded) from images (N, 1, H, W)."""
    chosen = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:count]
    return style_condition(encoder, images[chosen])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default="vision/params.yaml")
    parser.add_argument("--styles", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    params = load_params(args.params)
    cfg = params.vision.condition
    with stage_run("conditions", params):
        encoder = condition_encoder(cfg)
        bank, generation = [], []
        for style in params.groups:
            images = load_style_set(style_set_file(args.styles, style))
            seed = hash_seed(params.seed, style)
            bank.append(torch.stack([exemplar_condition(encoder, images["train"], cfg.exemplars, seed + draw)
                                     for draw in range(cfg.draws)]))
            generation.append(exemplar_condition(encoder, images["select"], cfg.exemplars, seed))
        args.out.mkdir(parents=True, exist_ok=True)
        save_file({"bank": torch.stack(bank).contiguous(), "generation": torch.stack(generation).contiguous()},
                  str(args.out / CONDITIONS))  # bank (S, draws, D); generation (S, D)
        record = {"type": "image", "encoder": encoder.name, "styles": params.groups, "exemplars": cfg.exemplars}
        (args.out / CONDITION_TEXTS).write_text(json.dumps(record, indent=1))
        print(record, tuple(torch.stack(bank).shape))


if __name__ == "__main__":
    main()
