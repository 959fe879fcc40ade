"""Stage normalize: pad every task's corpus to the common length and fit `norm` (task | batch | none)."""
import argparse
from pathlib import Path

import mlflow
import torch
from safetensors.torch import save_file

from condpdiff.config import load_params
from condpdiff.corpus import load_task_corpus, pad_to
from condpdiff.lora import read_layouts
from condpdiff.normalize import fit_normalizer
from condpdiff.tracking import stage_run

parser = argparse.ArgumentParser()
parser.add_argument("--params", default="params.yaml")
parser.add_argument("--corpus", type=Path, required=True)
parser.add_argument("--out", type=Path, required=True)
args = parser.parse_args()
params = load_params(args.params)

with stage_run("normalize", params, ("norm",)):
    layouts, padded_length, _ = read_layouts(args.corpus / "layout.json")
    tasks = params.data.tasks
    blocks = [pad_to(load_task_corpus(args.corpus / f"{task}.safetensors")[0], padded_length) for task in tasks]
    corpus = torch.cat(blocks)  # (T * N, L)
    task_index = torch.cat([torch.full((len(b),), i) for i, b in enumerate(blocks)])
    normalizer = fit_normalizer(params.norm, corpus, task_index, len(tasks))
    normalized = normalizer.transform(corpus, task_index)
    error = (normalizer.inverse(normalized, task_index) - corpus).abs().max().item()
    args.out.mkdir(parents=True, exist_ok=True)
    normalizer.save(args.out / "stats.safetensors")
    save_file({"corpus": normalized.contiguous(), "task_index": task_index}, str(args.out / "corpus.safetensors"),
              metadata={"tasks": ",".join(tasks)})
    mlflow.log_metrics({"inverse_max_abs_error": error, "normalized_std": normalized.std().item()})
    print(f"norm={params.norm.value}: {tuple(corpus.shape)} corpus, inverse error {error:.2e}")
