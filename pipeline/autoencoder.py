"""Stage autoencoder: train the 1D-CNN autoencoder on the normalized corpus, write the latents."""
import argparse
import json
from pathlib import Path

import mlflow
import torch
from safetensors.torch import load_file, save_file

from condpdiff.autoencoder import Autoencoder, AutoencoderSpec, save_autoencoder, train_autoencoder
from condpdiff.config import load_params
from condpdiff.tracking import metric_logger, stage_run

parser = argparse.ArgumentParser()
parser.add_argument("--params", default="params.yaml")
parser.add_argument("--normalized", type=Path, required=True)
parser.add_argument("--out", type=Path, required=True)
args = parser.parse_args()
params = load_params(args.params)
cfg = params.autoencoder

with stage_run("autoencoder", params, ("autoencoder", "seed")):
    data = load_file(str(args.normalized / "corpus.safetensors"))
    corpus, task_index = data["corpus"], data["task_index"]
    spec = AutoencoderSpec(corpus.shape[1], tuple(cfg.channels), cfg.latent_channels, cfg.stride,
                           cfg.input_noise, cfg.latent_noise)
    torch.manual_seed(params.seed)
    model = train_autoencoder(Autoencoder(spec), corpus, cfg.steps, cfg.batch_size, cfg.lr, params.seed,
                              on_step=metric_logger())
    with torch.inference_mode():
        latents = model.encode(corpus)
        reconstruction_mse = torch.nn.functional.mse_loss(model.decode(latents), corpus).item()
    args.out.mkdir(parents=True, exist_ok=True)
    save_autoencoder(model, args.out / "model.pt")
    save_file({"latents": latents.contiguous(), "task_index": task_index}, str(args.out / "latents.safetensors"))
    summary = {"reconstruction_mse": reconstruction_mse, "latent_shape": list(spec.latent_shape),
               "parameters": sum(p.numel() for p in model.parameters())}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    mlflow.log_metrics({"reconstruction_mse": reconstruction_mse})
    print(summary)
