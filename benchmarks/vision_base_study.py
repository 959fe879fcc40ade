"""Which base-model recipe draws recognisable garments soonest? Train the vision base model once per
recipe (the default profile's model, data and classifier; steps, Min-SNR gamma, EMA decay and the learning
rate schedule vary) and
report the share of its samples that the classifier labels as their caption's class.

    python benchmarks/vision_base_study.py --recipes 2000:5:0.995 2000:0:0.995 --threads 1
    python benchmarks/vision_base_study.py --recipes 6000:0:0.999:cosine --guidance 2
    python benchmarks/vision_base_study.py --trained outputs/vision/base --sample-steps 25 50 --spacing leading trailing

`--trained` scores a base model the pipeline already trained (its own classifier too) under each DDIM step
count, timestep spacing and guidance scale: how to sample, without training again. Samples are drawn with seed 1000, not the base stage's seed 0, so a recipe chosen here is checked on
other samples by the stage. Prints one JSON line per recipe and guidance scale.
"""
import argparse
import json
import time
from pathlib import Path

import torch

from common import parse_recipe
from condpdiff.config import LR_SCHEDULES, load_params
from diffusers import DDPMScheduler

from condpdiff.vision.backbone import base_captions, build_base, load_base, sample_images
from condpdiff.vision.classifier import accuracy, predict, train_classifier
from condpdiff.vision.data import load_split
from condpdiff.vision.imagesets import to_model_range
from condpdiff.vision.pixart import train_denoiser

SAMPLE_SEED = 1000
FORM = "steps:min_snr_gamma:ema_decay[:lr_schedule]"  # the params' constant schedule when left out


def lr_schedule(text: str) -> str:
    name = "constant" if text == "0" else text
    if name not in LR_SCHEDULES:
        raise ValueError(name)
    return name


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default="vision/params.yaml")
    parser.add_argument("--recipes", nargs="+", help=f"{FORM} each")
    parser.add_argument("--trained", type=Path, help="a base stage's folder: compare ways to sample it instead")
    parser.add_argument("--sample-steps", type=int, nargs="+", help="DDIM steps (--trained; default: the params')")
    parser.add_argument("--spacing", nargs="+", default=["leading"], help="DDIM timestep spacing (--trained)")
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--guidance", type=float, nargs="+", default=[2.0, 3.0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if (args.recipes is None) == (args.trained is None):
        parser.error("give exactly one of --recipes (train and score) and --trained (score ways to sample)")
    if args.trained is not None:
        torch.set_num_threads(args.threads)
        return score_sampling(args, load_params(args.params).vision.base)
    recipes = [parse_recipe(text, (int, float, float, lr_schedule), 3, FORM) for text in args.recipes]
    torch.set_num_threads(args.threads)
    params = load_params(args.params)
    data, base = params.vision.data, params.vision.base
    train, train_labels = load_split(Path(data.folder), "train")
    test, test_labels = load_split(Path(data.folder), "test")
    images, labels = to_model_range(train), torch.from_numpy(train_labels)
    classifier = train_classifier(images, labels, base.classifier_steps, params.seed)
    real = accuracy(classifier, to_model_range(test), torch.from_numpy(test_labels))
    print(json.dumps({"classifier_steps": base.classifier_steps, "real_test_accuracy": round(real, 4)}), flush=True)
    captions = base_captions(base)
    asked = torch.arange(args.samples) % len(captions.states)
    for steps, gamma, decay, schedule in recipes:
        backbone = build_base(base, captions, params.seed)
        start = time.perf_counter()
        train_denoiser(backbone.transformer, backbone.scheduler, images[:data.base_images], labels[:data.base_images],
                       captions, steps, base.batch_size, base.lr, base.caption_dropout, params.seed,
                       backbone.to_latents, decay, min_snr_gamma=gamma, lr_schedule=schedule)
        seconds = time.perf_counter() - start
        for guidance in args.guidance:
            samples = sample_images(backbone, captions, asked, base.sample_steps, guidance, SAMPLE_SEED)
            hit = (predict(classifier, samples) == asked).float()
            print(json.dumps({"steps": steps, "min_snr_gamma": gamma, "ema_decay": decay, "lr_schedule": schedule,
                              "guidance": guidance,
                              "recognised": round(hit.mean().item(), 3), "samples": args.samples,
                              "per_class": [round(hit[asked == c].mean().item(), 2)
                                            for c in range(len(captions.states))],
                              "train_seconds": round(seconds)}), flush=True)


def score_sampling(args, base) -> None:
    """The trained base under every DDIM step count x timestep spacing x guidance scale asked for."""
    backbone, captions, classifier = load_base(args.trained)
    asked = torch.arange(args.samples) % len(captions.states)
    for spacing in args.spacing:
        backbone.scheduler = DDPMScheduler.from_config(backbone.scheduler.config, timestep_spacing=spacing)
        for steps in args.sample_steps or [base.sample_steps]:
            for guidance in args.guidance:
                start = time.perf_counter()
                samples = sample_images(backbone, captions, asked, steps, guidance, SAMPLE_SEED)
                hit = (predict(classifier, samples) == asked).float()
                print(json.dumps({"trained": str(args.trained), "sample_steps": steps, "spacing": spacing,
                                  "guidance": guidance, "recognised": round(hit.mean().item(), 3),
                                  "samples": args.samples, "per_class": [round(hit[asked == c].mean().item(), 2)
                                                                         for c in range(len(captions.states))],
                                  "sample_seconds": round(time.perf_counter() - start, 1)}), flush=True)


if __name__ == "__main__":
    main()
