"""Stage diffusion: train the conditional latent DDPM on the autoencoder's latents."""
import argparse
from pathlib import Path

import mlflow
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from condpdiff.config import ConditionType, load_params
from condpdiff.denoiser import Denoiser, DenoiserSpec
from condpdiff.diffusion import make_scheduler, save_diffusion, train_diffusion
from condpdiff.tracking import metric_logger, stage_run

parser = argparse.ArgumentParser()
parser.add_argument("--params", default="params.yaml")
parser.add_argument("--latents", type=Path, required=True)
parser.add_argument("--conditions", type=Path, required=True)
parser.add_argument("--out", type=Path, required=True)
args = parser.parse_args()
params = load_params(args.params)
cfg = params.diffusion

with stage_run("diffusion", params, ("diffusion", "seed")):
    data = load_file(str(args.latents / "latents.safetensors"))
    latents, task_index = data["latents"], data["task_index"]
    with safe_open(str(args.conditions / "conditions.safetensors"), "pt") as handle:
        kind = ConditionType(handle.metadata()["type"])
        conditions = handle.get_tensor("conditions")
    latent_scale = latents.std().item()  # diffuse in unit-variance latent space
    spec = DenoiserSpec(latents.shape[1], conditions.shape[1], tuple(cfg.channels), cfg.embed_dim,
                        learned_condition=kind is ConditionType.learned)
    torch.manual_seed(params.seed)
    scheduler = make_scheduler(cfg.timesteps, cfg.beta_schedule)
    model = train_diffusion(Denoiser(spec), scheduler, latents / latent_scale, conditions[task_index],
                            cfg.steps, cfg.batch_size, cfg.lr, params.seed, on_step=metric_logger())
    args.out.mkdir(parents=True, exist_ok=True)
    save_diffusion(model, scheduler, latent_scale, args.out / "model.pt")
    mlflow.log_metrics({"latent_scale": latent_scale, "parameters": sum(p.numel() for p in model.parameters())})
