"""Which base-model recipe draws recognisable garments soonest, and how should it be sampled?

    python benchmarks/vision_base_study.py --recipes 2000:5:0.995 2000:0:0.995 --threads 1
    python benchmarks/vision_base_study.py --recipes 6000:0:0.999:cosine --guidance 2
    python benchmarks/vision_base_study.py --trained outputs/vision/base --sample-steps 25 50 --spacing leading trailing
    python benchmarks/vision_base_study.py --trained outputs/vision/base --sampler ddim ddpm --sample-steps 25 50

`--recipes` trains the vision base model once per recipe (the default profile's model, data and classifier;
steps, Min-SNR gamma, EMA decay and the learning-rate schedule vary; a schedule left out is the params')
and reports the share of its samples that the classifier labels as their caption's class. `--trained`
scores a base model the pipeline already trained (with its own classifier) under each sampler (ancestral
ddpm or deterministic ddim), step count, timestep spacing and guidance scale: how to sample, without training
again. Samples are drawn with seed 1000, not the base stage's seed 0, so a choice made here is checked on other
samples by the stage. Prints one JSON line per recipe (or sampling) and guidance scale.
"""
import argparse
import dataclasses
import itertools
import json
import time
from pathlib import Path

import torch
from diffusers import DDPMScheduler

from common import parse_recipe
from condpdiff.config import ConfigError, ImageBaseConfig, LrSchedule, Sampler, check_vision_params, load_params
from condpdiff.vision.backbone import base_captions, load_base, sample_images, train_base
from condpdiff.vision.classifier import accuracy, recognition, train_classifier
from condpdiff.vision.data import CLASSES, load_split
from condpdiff.vision.imagesets import to_model_range

SAMPLE_SEED = 1000
FORM = "steps:min_snr_gamma:ema_decay[:lr_schedule]"
SPACINGS = ("leading", "trailing", "linspace")  # diffusers' timestep_spacing


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default="vision/params.yaml")
    parser.add_argument("--recipes", nargs="+", help=f"{FORM} each")
    parser.add_argument("--trained", type=Path, help="a base stage's folder: compare ways to sample it instead")
    parser.add_argument("--sampler", nargs="+", choices=[sampler.value for sampler in Sampler],
                        help="--trained; default: the params'")
    parser.add_argument("--sample-steps", type=int, nargs="+", help="--trained; default: the params'")
    parser.add_argument("--spacing", nargs="+", choices=SPACINGS, help="timestep spacing (--trained; "
                                                                       "default: the trained scheduler's)")
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--guidance", type=float, nargs="+", default=[2.0, 3.0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if (args.recipes is None) == (args.trained is None):
        parser.error("give exactly one of --recipes (train and score) and --trained (score ways to sample)")
    if args.recipes is not None and (args.sampler or args.sample_steps or args.spacing):
        parser.error("--sampler, --sample-steps and --spacing go with --trained")
    params = load_params(args.params)
    data, base = params.vision.data, params.vision.base
    torch.set_num_threads(args.threads)
    if args.trained is not None:
        score_sampling(args, base)
        return
    recipes = []
    for text in args.recipes:  # checked as the stage checks its params, before the classifier trains
        steps, gamma, decay, schedule = parse_recipe(text, (int, float, float, LrSchedule), (base.lr_schedule,), FORM)
        recipes.append(dataclasses.replace(base, steps=steps, min_snr_gamma=gamma, ema_decay=decay, lr_schedule=schedule))
        try:
            check_vision_params(dataclasses.replace(params, vision=dataclasses.replace(params.vision, base=recipes[-1])),
                                args.params)
        except ConfigError as error:
            parser.error(str(error))
    train, train_labels = load_split(Path(data.folder), "train")
    test, test_labels = load_split(Path(data.folder), "test")
    images, labels = to_model_range(train), torch.from_numpy(train_labels)
    classifier = train_classifier(images, labels, base.classifier_steps, params.seed)
    real = accuracy(classifier, to_model_range(test), torch.from_numpy(test_labels))
    print(json.dumps({"classifier_steps": base.classifier_steps, "real_test_accuracy": round(real, 4)}), flush=True)
    captions = base_captions(base)
    asked = torch.arange(args.samples) % len(CLASSES)
    for recipe in recipes:
        start = time.perf_counter()
        backbone = train_base(recipe, captions, images[:data.base_images], labels[:data.base_images], params.seed)
        seconds = time.perf_counter() - start
        for guidance in args.guidance:
            samples = sample_images(backbone, captions, asked, base.sampler, base.sample_steps, guidance, SAMPLE_SEED)
            print(json.dumps({"steps": recipe.steps, "min_snr_gamma": recipe.min_snr_gamma,
                              "ema_decay": recipe.ema_decay, "lr_schedule": recipe.lr_schedule.value,
                              "guidance": guidance, "samples": args.samples, "train_seconds": round(seconds),
                              **rounded(recognition(classifier, samples, asked, len(CLASSES)))}), flush=True)


def score_sampling(args: argparse.Namespace, base: ImageBaseConfig) -> None:
    """The trained base under every sampler x step count x timestep spacing x guidance scale asked for."""
    backbone, captions, classifier = load_base(args.trained)
    asked = torch.arange(args.samples) % len(CLASSES)
    for spacing in args.spacing or [backbone.scheduler.config.timestep_spacing]:
        backbone.scheduler = DDPMScheduler.from_config(backbone.scheduler.config, timestep_spacing=spacing)
        for sampler, steps, guidance in itertools.product(args.sampler or [base.sampler.value],
                                                          args.sample_steps or [base.sample_steps], args.guidance):
            start = time.perf_counter()
            samples = sample_images(backbone, captions, asked, sampler, steps, guidance, SAMPLE_SEED)
            print(json.dumps({"trained": str(args.trained), "sampler": sampler, "sample_steps": steps,
                              "spacing": spacing, "guidance": guidance, "samples": args.samples,
                              "sample_seconds": round(time.perf_counter() - start, 1),
                              **rounded(recognition(classifier, samples, asked, len(CLASSES)))}), flush=True)


def rounded(found: dict) -> dict:
    return {**found, "recognised": round(found["recognised"], 3),
            "recognised_per_class": [None if share is None else round(share, 2)
                                     for share in found["recognised_per_class"]]}


if __name__ == "__main__":
    main()
