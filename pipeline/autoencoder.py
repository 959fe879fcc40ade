"""Stage autoencoder: train the 1D-CNN autoencoder on the normalized corpus, write the latents."""
import argparse
import json
from pathlib import Path

import mlflow
import torch
from safetensors.torch import load_file, save_file

from condpdiff.artifacts import LATENTS, MODEL, NORMALIZED, SUMMARY
from condpdiff.autoencoder import encode_latents, fit_autoencoder, save_autoencoder
from condpdiff.config import load_params
from condpdiff.distributed import world
from condpdiff.tracking import metric_logger, stage_run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--normalized", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    params = load_params(args.params)
    with stage_run("autoencoder", params):
        data = load_file(str(args.normalized / NORMALIZED))
        corpus, task_index = data["corpus"], data["task_index"]
        model = fit_autoencoder(params.autoencoder, corpus, params.seed, on_step=metric_logger())
        if not world().is_main:  # torchrun: rank 0 writes the outputs
            return
        latents = encode_latents(model, corpus)
        with torch.inference_mode():
            reconstruction_mse = torch.nn.functional.mse_loss(model.decode(latents), corpus).item()
        args.out.mkdir(parents=True, exist_ok=True)
        save_autoencoder(model, args.out / MODEL)
        save_file({"latents": latents.contiguous(), "task_index": task_index}, str(args.out / LATENTS))
        summary = {"reconstruction_mse": reconstruction_mse, "latent_shape": list(model.spec.latent_shape),
                   "parameters": sum(p.numel() for p in model.parameters())}
        (args.out / SUMMARY).write_text(json.dumps(summary, indent=1))
        mlflow.log_metrics({"reconstruction_mse": reconstruction_mse})
        print(summary)


if __name__ == "__main__":
    main()
