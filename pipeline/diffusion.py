"""Stage diffusion: train the conditional latent DDPM on the autoencoder's latents (and, under
norm=cond, the network that predicts a task's mean from its condition)."""
import argparse
import json
from pathlib import Path

import mlflow
from safetensors.torch import load_file

from condpdiff.artifacts import CONDITION_TEXTS, CONDITIONS, LATENTS, MODEL, STATS
from condpdiff.config import ConditionType, load_params
from condpdiff.diffusion import fit_denoiser, save_diffusion
from condpdiff.distributed import world
from condpdiff.normalize import Normalizer
from condpdiff.tracking import metric_logger, stage_run
from condpdiff.training import fit_condition_mean


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--latents", type=Path, required=True)
    parser.add_argument("--conditions", type=Path, required=True)
    parser.add_argument("--normalized", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    params = load_params(args.params)
    with stage_run("diffusion", params):
        data = load_file(str(args.latents / LATENTS))
        latents, task_index = data["latents"], data["task_index"]
        bank = load_file(str(args.conditions / CONDITIONS))["bank"]
        kind = json.loads((args.conditions / CONDITION_TEXTS).read_text())["type"]
        learned = kind == ConditionType.learned.value  # the vision branch writes "image"
        normalizer = Normalizer.load(args.normalized / STATS)
        mean_predictor = fit_condition_mean(params, normalizer, bank, on_step=metric_logger())
        model, scheduler, latent_scale = fit_denoiser(params.diffusion, latents, task_index, bank, learned,
                                                      params.seed, on_step=metric_logger())
        if not world().is_main:  # torchrun: rank 0 writes the outputs
            return
        args.out.mkdir(parents=True, exist_ok=True)
        save_diffusion(model, scheduler, latent_scale, args.out / MODEL, mean_predictor)
        mlflow.log_metrics({"latent_scale": latent_scale, "parameters": sum(p.numel() for p in model.parameters())})


if __name__ == "__main__":
    main()
