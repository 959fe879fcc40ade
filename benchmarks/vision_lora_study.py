"""How strong must a style LoRA be? Train one LoRA per recipe on a style's `train` images from the
workspace's base model (`dvc repro vision/dvc.yaml` first) and score its last checkpoint, and the base
model, by KID against the style's `select` images (never `eval`: the study picks the default recipe).

    python benchmarks/vision_lora_study.py --styles sketch negative   # reports/vision/lora_study.{json,md}
    python benchmarks/vision_lora_study.py --recipes 500:3e-3:4:5 --out reports/vision/lora_study_minsnr

Each recipe is steps:lr:rank[:min_snr_gamma]; the LoRA targets and batch are the default profile's.
"""
import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from common import parse_recipe
from condpdiff.config import load_params
from condpdiff.conditions import hash_seed
from condpdiff.lora import flatten_model
from condpdiff.vision.backbone import load_base, train_style_lora
from condpdiff.vision.features import InceptionFeatures
from condpdiff.vision.imagesets import load_style_set, style_set_file
from condpdiff.vision.scoring import StyleScorer

RECIPES = ["500:1e-3:4", "500:3e-3:4", "1500:1e-3:4", "1500:3e-3:4", "1000:3e-3:8"]

FORM = "steps:lr:rank[:min_snr_gamma]"  # gamma 0 (the plain loss) when left out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default="vision/params.yaml")
    parser.add_argument("--styles", nargs="+", default=["sketch", "negative"])
    parser.add_argument("--images", type=int, default=64, help="generated images per score")
    parser.add_argument("--recipes", nargs="+", default=RECIPES, help="steps:lr:rank[:min_snr_gamma] each")
    parser.add_argument("--base", type=Path, default=Path("outputs/vision/base"))
    parser.add_argument("--out", type=Path, default=Path("reports/vision/lora_study"))
    args = parser.parse_args()
    # a malformed recipe stops here, before any work
    recipes = [parse_recipe(text, (int, float, int, float), (0.0,), FORM) for text in args.recipes]
    torch.set_num_threads(2)
    params = load_params(args.params)
    v = params.vision
    inception = InceptionFeatures()
    rows = []
    for style in args.styles:
        images = load_style_set(style_set_file(Path("outputs/vision/styles"), style))
        select = load_file(str(style_set_file(Path("outputs/vision/references"), style)))["select"].numpy()
        seed = hash_seed(params.seed, style)
        base_scored = False
        for steps, lr, rank, gamma in recipes:
            backbone, captions, _ = load_base(args.base)
            lora = dataclasses.replace(v.lora, r=rank, alpha=rank)
            scorer = StyleScorer(backbone, captions, v.base, lora, v.score, inception)
            start = time.perf_counter()
            recipe = dataclasses.replace(v.collect, steps=steps, lr=lr, min_snr_gamma=gamma)
            train_style_lora(backbone, captions, images, recipe, v.base.caption_dropout, seed)
            seconds = time.perf_counter() - start
            score, _ = scorer.score(flatten_model(backbone.transformer, scorer.layout), select, args.images, seed)
            label = f"{steps} steps, lr {lr:g}, r {rank}" + (f", min-SNR {gamma:g}" if gamma else "")
            rows.append({"style": style, "recipe": label, "kid": score.kid,
                         "kid_std": score.kid_std, "train_seconds": seconds})
            print(rows[-1], flush=True)
            if not base_scored:  # after training: a zero vector zeroes lora_A too, and nothing would learn
                score, _ = scorer.score(torch.zeros(scorer.layout.length), select, args.images, seed)
                rows.append({"style": style, "recipe": "no LoRA (base)", "kid": score.kid, "kid_std": score.kid_std})
                print(rows[-1], flush=True)
                base_scored = True
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    lines = ["| style | recipe | KID x 100 on select (+- std) | train s |", "|---|---|---|---|"]
    lines += [f"| {r['style']} | {r['recipe']} | {100 * r['kid']:.2f} +- {100 * r['kid_std']:.2f} | "
              f"{r.get('train_seconds', 0):.0f} |" for r in rows]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
