"""Stage generate: K adapters per task from its own condition, K from another task's condition (the
wrong-condition control: this task's layout, another's condition) and K from the no-diffusion analogue
(N(0, I) de-normalized like a sample: what the autoencoder and the diffusion must beat)."""
import argparse
import json
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from condpdiff.artifacts import MANIFEST, VECTORS, GeneratorFiles
from condpdiff.config import load_params
from condpdiff.generator import generation_seed, load_generator
from condpdiff.lora import build_peft_model, read_layouts, write_adapter
from condpdiff.tracking import stage_run


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("corpus", "normalized", "autoencoder", "conditions", "diffusion", "out"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    params = load_params(args.params)
    cfg = params.generate
    with stage_run("generate", params):
        files = GeneratorFiles.from_outputs(args.corpus, args.normalized, args.autoencoder, args.conditions,
                                            args.diffusion)
        layouts, _, num_labels = read_layouts(files.layout)
        generator = load_generator(files)
        with safe_open(str(files.conditions), "pt") as handle:
            conditions = handle.get_tensor("conditions")
        tasks = params.data.tasks
        manifest = {}
        for i, task in enumerate(tasks):
            other = (i + 1) % len(tasks)
            common = dict(stats_index=i, length=layouts[task].length, samples=cfg.samples,
                          sampler=cfg.sampler.value, inference_steps=cfg.inference_steps, guidance=cfg.guidance)
            seed = generation_seed(params.seed, i)
            own = generator.generate(conditions[i], seed=seed, **common)
            wrong = generator.generate(conditions[other], seed=seed, **common)
            trivial = generator.no_diffusion(conditions[i], i, layouts[task].length, cfg.samples, seed)
            folder = args.out / task
            folder.mkdir(parents=True, exist_ok=True)
            save_file({"generated": own, "wrong_condition": wrong, "no_diffusion": trivial}, str(folder / VECTORS),
                      metadata={"wrong_condition_task": tasks[other]})
            model = build_peft_model(params.base, params.lora, num_labels[task], params.seed)
            for k in range(cfg.samples):
                write_adapter(model, own[k], layouts[task], folder / f"adapter_{k:02d}")
            manifest[task] = {"samples": cfg.samples, "seed": seed, "wrong_condition_task": tasks[other]}
            print(f"{task}: {cfg.samples} adapters written to {folder}")
        (args.out / MANIFEST).write_text(json.dumps(manifest, indent=1))


if __name__ == "__main__":
    main()
