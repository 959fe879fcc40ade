"""Stage generate: K adapters per task from its own condition, and K from another task's
condition (the wrong-condition control: this task's stats and layout, another's condition)."""
import argparse
import json
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from condpdiff.config import load_params
from condpdiff.generator import load_generator
from condpdiff.lora import build_peft_model, read_layouts, write_adapter
from condpdiff.tracking import stage_run

parser = argparse.ArgumentParser()
parser.add_argument("--params", default="params.yaml")
parser.add_argument("--corpus", type=Path, required=True)
parser.add_argument("--normalized", type=Path, required=True)
parser.add_argument("--autoencoder", type=Path, required=True)
parser.add_argument("--conditions", type=Path, required=True)
parser.add_argument("--diffusion", type=Path, required=True)
parser.add_argument("--out", type=Path, required=True)
args = parser.parse_args()
params = load_params(args.params)
cfg = params.generate

with stage_run("generate", params, ("generate", "seed")):
    layouts, _, num_labels = read_layouts(args.corpus / "layout.json")
    generator = load_generator(args.autoencoder / "model.pt", args.diffusion / "model.pt",
                               args.normalized / "stats.safetensors")
    with safe_open(str(args.conditions / "conditions.safetensors"), "pt") as handle:
        conditions = handle.get_tensor("conditions")
    tasks = params.data.tasks
    manifest = {}
    for i, task in enumerate(tasks):
        other = (i + 1) % len(tasks)
        common = dict(stats_index=i, length=layouts[task].length, samples=cfg.samples, sampler=cfg.sampler.value,
                      inference_steps=cfg.inference_steps)
        seed = params.seed * 1000 + i  # `python -m condpdiff generate --task T --samples K --seed S` repeats it
        own = generator.generate(conditions[i], seed=seed, **common)
        wrong = generator.generate(conditions[other], seed=seed, **common)
        folder = args.out / task
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"generated": own, "wrong_condition": wrong}, str(folder / "vectors.safetensors"),
                  metadata={"wrong_condition_task": tasks[other]})
        model = build_peft_model(params.base, params.lora, num_labels[task], params.seed)
        for k in range(cfg.samples):
            write_adapter(model, own[k], layouts[task], folder / f"adapter_{k:02d}")
        manifest[task] = {"samples": cfg.samples, "seed": seed, "wrong_condition_task": tasks[other]}
        print(f"{task}: {cfg.samples} adapters written to {folder}")
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1))
