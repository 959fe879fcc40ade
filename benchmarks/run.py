"""Every benchmark, from one command, on the outputs of `dvc repro`:

    python benchmarks/run.py                      # all four: reports/bench/<name>.json + reports/bench/README.md
    python benchmarks/run.py --only sampler_quality

Each result records the machine, the load average before and after, and any other process that used the CPU
beside it; `--require-quiet` stops before measuring when one does. Timings are medians of >= 3 runs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

import pipeline_profile
import sampler_quality
import scaling
import time_to_adapter
from common import machine
from condpdiff.config import load_params

BENCHMARKS = ("time_to_adapter", "sampler_quality", "scaling", "pipeline_profile")
MODULES = {"time_to_adapter": time_to_adapter, "sampler_quality": sampler_quality, "scaling": scaling,
           "pipeline_profile": pipeline_profile}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--outputs", type=Path, default=Path("outputs"))
    parser.add_argument("--out", type=Path, default=Path("reports/bench"))
    parser.add_argument("--task", default="sst2", help="the task of the time and profile benchmarks")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--finetune-repeats", type=int, default=3)
    parser.add_argument("--check-every", type=int, default=20, help="fine-tuning steps between select checks "
                                                                      "(a multiple of 10)")
    parser.add_argument("--memory-cap-gib", type=float, default=16.0)
    parser.add_argument("--require-quiet", action="store_true", help="stop if another process uses the CPU")
    args = parser.parse_args()
    params = load_params(args.params)
    if args.task not in params.data.tasks:
        parser.error(f"--task {args.task} is not in data.tasks {params.data.tasks}")
    if args.repeats < 3 or args.finetune_repeats < 1 or args.check_every % 10:
        parser.error("--repeats >= 3, --finetune-repeats >= 1, --check-every a multiple of 10")
    missing = [str(args.outputs / name) for name in ("corpus", "generated", "evaluation", "diffusion", "prepared")
               if not (args.outputs / name).is_dir()]
    if missing:
        parser.error(f"run `dvc repro` first; missing: {missing}")
    torch.set_flush_denormal(True)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.only:
        before = machine()
        print(f"== {name}: load {before['load_average']}, other heavy processes: {before['other_heavy_processes']}")
        if args.require_quiet and before["other_heavy_processes"]:
            print(f"stopping: other processes use the CPU: {before['other_heavy_processes']}", file=sys.stderr)
            return 3
        start = time.perf_counter()
        if name == "time_to_adapter":
            result = time_to_adapter.run(params, args.outputs, args.task, args.repeats, args.finetune_repeats,
                                         args.check_every)
        elif name == "sampler_quality":
            result = sampler_quality.run(params, args.outputs)
        elif name == "scaling":
            result = scaling.run(params, args.params, args.memory_cap_gib, repeats=args.repeats)
        else:
            result = pipeline_profile.run(params, args.outputs, args.task, steps=30)
        after = os.getloadavg()
        record = {"benchmark": name, "seconds": time.perf_counter() - start, "machine": before,
                  "load_average_after": [round(x, 2) for x in after], "result": result}
        (args.out / f"{name}.json").write_text(json.dumps(record, indent=1))
    (args.out / "README.md").write_text(render(args.out))
    print((args.out / "README.md").read_text())
    return 0


def render(folder: Path) -> str:
    """Every benchmark's JSON in `folder` as one Markdown page, each with its machine and load."""
    parts = ["# Benchmarks", "", "Written by `python benchmarks/run.py` from the JSON beside this file; "
             "see benchmarks/README.md for the definitions.", ""]
    for name in BENCHMARKS:
        path = folder / f"{name}.json"
        if not path.is_file():
            continue
        record = json.loads(path.read_text())
        box = record["machine"]
        others = ", ".join(f"{p['command']} ({p['cpu_percent']:.0f}%)" for p in box["other_heavy_processes"]) or "none"
        parts += [MODULES[name].render(record["result"]), "",
                  f"*Machine: {box['cpu_model']}, {box['logical_cores']} logical cores ({box['torch_threads']} torch "
                  f"threads), {box['memory_gib']} GiB, torch {box['torch']}. Load average before "
                  f"{box['load_average']}, after {record['load_average_after']}; other processes on the CPU: "
                  f"{others}. This benchmark took {record['seconds'] / 60:.1f} min.*", ""]
    return "\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
