"""Scaling: a training step of each generator part and its peak memory against the flat vector length.

Lengths: the MiniLM layouts at LoRA r = 1, 2, 4, 8, 16 (the params' target modules, a two-label head) and a
synthetic vector of BERT-base r = 16 size (1,179,648). Each (part, length) runs in its own process on random
data of the corpus' size (tasks x keep_last vectors), so its peak resident memory is its own; the parent kills
a process whose memory passes the cap, so the benchmark cannot take the machine down.
    python benchmarks/scaling.py --worker autoencoder --length 19202   (one measurement, JSON on stdout)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import psutil
import torch

BERT_BASE_R16 = 1_179_648
RANKS = (1, 2, 4, 8, 16)
PARTS = ("autoencoder", "diffusion", "mean_predictor")


def layout_lengths(params) -> dict[str, int]:
    from condpdiff.lora import build_peft_model, model_layout

    lengths = {f"MiniLM r={r}": model_layout(build_peft_model(params.base, replace(params.lora, r=r, alpha=2 * r),
                                                               2, params.seed)).length for r in RANKS}
    lengths["BERT-base r=16 (synthetic)"] = BERT_BASE_R16
    return lengths


def _time_steps(train, steps: int, repeats: int) -> list[float]:
    train(1)  # warm-up: allocator, kernels
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        train(steps)
        times.append((time.perf_counter() - start) / steps)
    return times


def worker(part: str, length: int, rows: int, steps: int, repeats: int, params_file: str) -> dict:
    from condpdiff.autoencoder import Autoencoder, autoencoder_spec, train_autoencoder
    from condpdiff.config import load_params
    from condpdiff.denoiser import Denoiser, denoiser_spec
    from condpdiff.diffusion import make_scheduler, train_diffusion
    from condpdiff.mean_predictor import fit_mean_predictor

    params = load_params(params_file)
    generator = torch.Generator().manual_seed(0)
    spec = autoencoder_spec(params.autoencoder, length)
    tasks, dim = len(params.data.tasks), 384
    if part == "autoencoder":
        data = torch.randn((rows, length), generator=generator)
        model = Autoencoder(spec)
        times = _time_steps(lambda n: train_autoencoder(model, data, replace(params.autoencoder, steps=n), 0),
                            steps, repeats)
        size = sum(p.numel() for p in model.parameters())
    elif part == "diffusion":
        latents = torch.randn((rows, *spec.latent_shape), generator=generator)
        bank = torch.nn.functional.normalize(torch.randn((tasks, 1, dim), generator=generator), dim=-1)
        index = torch.arange(rows) % tasks
        model = Denoiser(denoiser_spec(params.diffusion, spec.latent_shape[0], dim, False))
        scheduler = make_scheduler(params.diffusion.timesteps, params.diffusion.beta_schedule)
        times = _time_steps(lambda n: train_diffusion(model, scheduler, latents, index, bank,
                                                      replace(params.diffusion, steps=n, ema_decay=0.0), 0),
                            steps, repeats)
        size = sum(p.numel() for p in model.parameters())
    elif part == "mean_predictor":
        bank = torch.nn.functional.normalize(torch.randn((tasks, 1, dim), generator=generator), dim=-1)
        targets = torch.randn((tasks, length), generator=generator)
        models = []
        times = _time_steps(lambda n: models.append(fit_mean_predictor(replace(params.mean_predictor, steps=n),
                                                                       bank, targets, 0)), steps, repeats)
        size = sum(p.numel() for p in models[-1].parameters())
    else:
        raise ValueError(f"unknown part {part!r}; one of {PARTS}")
    return {"part": part, "length": length, "step_seconds": sorted(times)[len(times) // 2], "runs": times,
            "parameters": size, "latent_shape": list(spec.latent_shape)}


def measure(part: str, length: int, rows: int, steps: int, repeats: int, params_file: str, cap_gib: float) -> dict:
    """One worker process; its peak RSS from the kernel (wait4), killed if its RSS passes `cap_gib`."""
    with tempfile.TemporaryFile("w+") as out:
        process = subprocess.Popen([sys.executable, __file__, "--worker", part, "--length", str(length), "--rows",
                                    str(rows), "--steps", str(steps), "--repeats", str(repeats), "--params", params_file],
                                   stdout=out, stderr=subprocess.DEVNULL)
        watched, killed = psutil.Process(process.pid), False
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            try:
                if watched.memory_info().rss > cap_gib * 2 ** 30:
                    watched.kill()
                    killed = True
            except psutil.Error:
                pass
            time.sleep(0.05)
        process.returncode = os.waitstatus_to_exitcode(status)
        peak = usage.ru_maxrss * 1024 / 2 ** 30  # kilobytes on Linux
        out.seek(0)
        lines = out.read().strip().splitlines()
    if killed:
        return {"part": part, "length": length, "over_cap": True, "peak_gib": peak}
    if process.returncode != 0 or not lines:
        return {"part": part, "length": length, "failed": process.returncode, "peak_gib": peak}
    return {**json.loads(lines[-1]), "peak_gib": peak}


def run(params, params_file: str, cap_gib: float, steps: int = 2, repeats: int = 3) -> dict:
    rows = len(params.data.tasks) * params.collect.keep_last
    lengths = layout_lengths(params)
    results = []
    for name, length in lengths.items():
        for part in PARTS:
            row = {"layout": name, **measure(part, length, rows, steps, repeats, params_file, cap_gib)}
            print(json.dumps({k: v for k, v in row.items() if k != "runs"}))
            results.append(row)
    return {"rows_of_data": rows, "cap_gib": cap_gib, "steps_per_timing": steps, "results": results}


def render(result: dict) -> str:
    lines = [f"### Scaling: one training step against the vector length (data: {result['rows_of_data']} vectors, "
             f"memory cap {result['cap_gib']} GiB per process)", "",
             "| layout | length | part | parameters | seconds per step | peak memory (GiB) |", "|---|---|---|---|---|---|"]
    for row in result["results"]:
        if row.get("over_cap"):
            timing, size = f"over the {result['cap_gib']} GiB cap", ""
        elif row.get("failed") is not None:
            timing, size = f"failed (exit {row['failed']})", ""
        else:
            timing, size = f"{row['step_seconds']:.3f}", f"{row['parameters']:,}"
        lines.append(f"| {row['layout']} | {row['length']:,} | {row['part']} | {size} | {timing} | "
                     f"{row['peak_gib']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", choices=PARTS, required=True)
    parser.add_argument("--length", type=int, required=True)
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    print(json.dumps(worker(args.worker, args.length, args.rows, args.steps, args.repeats, args.params)))
