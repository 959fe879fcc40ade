"""Stage diffusion: train the conditional latent DDPM on the autoencoder's latents."""
import argparse
import json
from pathlib import Path

import mlflow
from safetensors.torch import load_file

from condpdiff.artifacts import CONDITION_TEXTS, CONDITIONS, LATENTS, MODEL
from condpdiff.config import ConditionType, load_params
from condpdiff.diffusion import fit_denoiser, save_diffusion
from condpdiff.tracking import metric_logger, stage_run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--latents", type=Path, required=True)
    parser.add_argument("--conditions", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    params = load_params(args.params)
    with stage_run("diffusion", params):
        data = load_file(str(args.latents / LATENTS))
        latents, task_index = data["latents"], data["task_index"]
        conditions = load_file(str(args.conditions / CONDITIONS))["conditions"]
        kind = json.loads((args.conditions / CONDITION_TEXTS).read_text())["type"]
        learned = ConditionType(kind) is ConditionType.learned
        model, scheduler, latent_scale = fit_denoiser(params.diffusion, latents, conditions[task_index], learned,
                                                      params.seed, on_step=metric_logger())
        args.out.mkdir(parents=True, exist_ok=True)
        save_diffusion(model, scheduler, latent_scale, args.out / MODEL)
        mlflow.log_metrics({"latent_scale": latent_scale, "parameters": sum(p.numel() for p in model.parameters())})


if __name__ == "__main__":
    main()
