"""Time to an adapter: generating one (DDPM and DDIM) vs fine-tuning one, measured in one run.

Needs the outputs of `dvc repro` (outputs/). Prints ratios, not absolute claims:
    python benchmarks/generate_vs_finetune.py --task sst2 --finetune-steps 50
"""
import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import safe_open

from condpdiff.artifacts import LAYOUTS, GeneratorFiles, split_file
from condpdiff.config import load_params
from condpdiff.finetune import finetune_and_collect
from condpdiff.generator import load_generator
from condpdiff.glue import TASK_SPECS, read_jsonl
from condpdiff.lora import build_peft_model, load_tokenizer, model_layout, read_layouts

parser = argparse.ArgumentParser()
parser.add_argument("--task", default="sst2")
parser.add_argument("--finetune-steps", type=int, default=50)
parser.add_argument("--outputs", type=Path, default=Path("outputs"))
args = parser.parse_args()
params = load_params("params.yaml")
torch.set_flush_denormal(True)

layouts, _, _ = read_layouts(args.outputs / "corpus" / LAYOUTS)
files = GeneratorFiles.from_outputs(*(args.outputs / stage for stage in
                                      ("corpus", "normalized", "autoencoder", "conditions", "diffusion")))
generator = load_generator(files)
with safe_open(str(files.conditions), "pt") as handle:
    conditions = handle.get_tensor("conditions")
index = params.data.tasks.index(args.task)

timings = {}
for sampler, steps in (("ddpm", 1000), ("ddim", 50)):
    start = time.perf_counter()
    generator.generate(conditions[index], index, layouts[args.task].length, 1, sampler, steps, seed=0)
    timings[f"generate_{sampler}_{steps}"] = time.perf_counter() - start

model = build_peft_model(params.base, params.lora, TASK_SPECS[args.task].num_labels, params.seed)
train = read_jsonl(split_file(args.outputs / "prepared" / args.task, "train"))
steps = args.finetune_steps
config = replace(params.collect, steps=steps, keep_last=1)
start = time.perf_counter()
finetune_and_collect(model, load_tokenizer(params.base), args.task, train, config, model_layout(model),
                     params.base.max_length, params.seed)
per_step = (time.perf_counter() - start) / steps
timings["finetune_full_schedule"] = per_step * params.collect.steps

for name, seconds in timings.items():
    print(f"{name:28s} {seconds:8.2f} s")
for sampler in ("generate_ddpm_1000", "generate_ddim_50"):
    print(f"fine-tune ({params.collect.steps} steps) / {sampler}: {timings['finetune_full_schedule'] / timings[sampler]:.1f}x")
print(f"DDPM-1000 / DDIM-50: {timings['generate_ddpm_1000'] / timings['generate_ddim_50']:.1f}x")
