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
import resource
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


def _step_seconds(train, steps: int, repeats: int) -> list[float]:
    """Seconds per training step: (T(1 + steps) - T(1)) / steps, each T the median of `repeats` fresh runs, so
    building the model and the optimizer's first allocation drop out. `train(n)` builds, trains n steps and
    returns nothing (so no model outlives its run)."""

    def seconds(n: int) -> float:
        start = time.perf_counter()
        train(n)
        return time.perf_counter() - start

    train(1)  # warm-up: allocator, kernels
    times = []
    for _ in range(repeats):
        times.append((seconds(1 + steps) - seconds(1)) / steps)
    return times


def worker(part: str, length: int, rows: int, steps: int, repeats: int, params_file: str) -> dict:
    from condpdiff.autoencoder import Autoencoder, autoencoder_spec, train_autoencoder
    from condpdiff.config import load_params
    from condpdiff.denoiser import Denoiser, denoiser_spec
    from condpdiff.diffusion import make_scheduler, train_diffusion
    from condpdiff.mean_predictor import MeanPredictor, MeanPredictorSpec, fit_mean_predictor

    params = load_params(params_file)
    generator = torch.Generator().manual_seed(0)
    spec = autoencoder_spec(params.autoencoder, length)
    tasks, dim = len(params.data.tasks), 384
    bank = torch.nn.functional.normalize(torch.randn((tasks, 1, dim), generator=generator), dim=-1)
    if part == "autoencoder":
        data = torch.randn((rows, length), generator=generator)
        size = sum(p.numel() for p in Autoencoder(spec).parameters())

        def train(n: int) -> None:
            train_autoencoder(Autoencoder(spec), data, replace(params.autoencoder, steps=n), 0)
    elif part == "diffusion":
        latents = torch.randn((rows, *spec.latent_shape), generator=generator)
        index = torch.arange(rows) % tasks
        denoiser = denoiser_spec(params.diffusion, spec.latent_shape[0], dim, False)
        scheduler = make_scheduler(params.diffusion.timesteps, params.diffusion.beta_schedule)
        size = sum(p.numel() for p in Denoiser(denoiser).parameters())

        def train(n: int) -> None:
            train_diffusion(Denoiser(denoiser), scheduler, latents, index, bank,
                            replace(params.diffusion, steps=n, ema_decay=0.0), 0)
    elif part == "mean_predictor":
        targets = torch.randn((tasks, length), generator=generator)
        size = sum(p.numel() for p in MeanPredictor(MeanPredictorSpec(dim, params.mean_predictor.hidden, 1)).parameters())
        size += (params.mean_predictor.hidden + 1) * (length - 1)  # the output layer grows with the length

        def train(n: int) -> None:
            fit_mean_predictor(replace(params.mean_predictor, steps=n), bank, targets, 0)
    else:
        raise ValueError(f"unknown part {part!r}; one of {PARTS}")
    baseline = psutil.Process().memory_info().rss / 2 ** 30  # imports and data, before any model
    times = _step_seconds(train, steps, repeats)
    return {"part": part, "length": length, "step_seconds": sorted(times)[len(times) // 2], "runs": times,
            "parameters": size, "latent_shape": list(spec.latent_shape), "baseline_gib": baseline,
            "peak_gib": own_peak_gib()}


def own_peak_gib() -> float:
    """This process's peak resident memory (VmHWM: reset at exec, so the parent's memory at fork is not in
    it, as it is in wait4's ru_maxrss)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 2 ** 30
    raise OSError("no VmHWM in /proc/self/status")


def measure(part: str, length: int, rows: int, steps: int, repeats: int, params_file: str, cap_gib: float) -> dict:
    """One worker process under a kernel memory limit of `cap_gib` (RLIMIT_DATA), killed if its RSS passes it;
    its peak RSS as it reports it (VmHWM)."""
    with tempfile.TemporaryFile("w+") as out:
        limit = int(cap_gib * 2 ** 30)
        process = subprocess.Popen([sys.executable, __file__, "--worker", part, "--length", str(length), "--rows",
                                    str(rows), "--steps", str(steps), "--repeats", str(repeats), "--params", params_file],
                                   stdout=out, stderr=subprocess.DEVNULL,
                                   preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_DATA, (limit, limit)))
        watched, killed, seen = psutil.Process(process.pid), False, 0
        while process.poll() is None:
            try:
                seen = max(seen, watched.memory_info().rss)
                if seen > limit:  # a backstop: the kernel's limit refuses the allocation first
                    watched.kill()
                    killed = True
            except psutil.Error:
                pass
            time.sleep(0.05)
        out.seek(0)
        lines = out.read().strip().splitlines()
    polled = seen / 2 ** 30  # the largest RSS the parent saw: the peak of a process that did not report its own
    if killed:
        return {"part": part, "length": length, "over_cap": True, "peak_gib": polled}
    if lines and json.loads(lines[-1]).get("over_cap"):
        return {**json.loads(lines[-1]), "peak_gib": polled}
    if process.returncode != 0 or not lines:
        return {"part": part, "length": length, "failed": process.returncode, "peak_gib": polled}
    return json.loads(lines[-1])


def run(params, params_file: str, cap_gib: float, steps: int = 2, repeats: int = 3) -> dict:
    rows = len(params.data.tasks) * params.collect.keep_last
    lengths = layout_lengths(params)
    results = []
    for name, length in lengths.items():
        for part in PARTS:
            row = {"layout": name, **measure(part, length, rows, steps, repeats, params_file, cap_gib)}
            print(json.dumps({k: v for k, v in row.items() if k != "runs"}))
            results.append(row)
    return {"rows_of_data": rows, "cap_gib": cap_gib, "steps_per_timing": steps, "results": results,
            "memory_gib": psutil.virtual_memory().total / 2 ** 30}


def growth(result: dict) -> dict[str, dict]:
    """Per part: the log-log slopes of step time and of memory above the baseline against the length (1 =
    linear), and the length at which a straight-line fit of the peak memory reaches the machine's memory."""
    import numpy as np

    fits = {}
    for part in PARTS:
        done = [r for r in result["results"] if r["part"] == part and "step_seconds" in r]
        if len(done) < 2:
            continue
        length = np.array([r["length"] for r in done], dtype=float)
        step = np.array([max(r["step_seconds"], 1e-6) for r in done])
        above = np.array([max(r["peak_gib"] - r["baseline_gib"], 1e-3) for r in done])
        slope, intercept = np.polyfit(length, [r["peak_gib"] for r in done], 1)
        fits[part] = {"time_slope": float(np.polyfit(np.log(length), np.log(step), 1)[0]),
                      "memory_slope": float(np.polyfit(np.log(length), np.log(above), 1)[0]),
                      "gib_per_million": float(slope * 1e6),
                      "length_at_memory": float((result["memory_gib"] - intercept) / slope) if slope > 0 else None}
    return fits


def render(result: dict) -> str:
    lines = [f"### Scaling: one training step against the vector length (data: {result['rows_of_data']} vectors, "
             f"memory cap {result['cap_gib']} GiB per process)", "",
             "| layout | length | part | parameters | seconds per step | peak memory (GiB) | of it before the model |",
             "|---|---|---|---|---|---|---|"]
    for row in result["results"]:
        if row.get("over_cap"):
            timing, size = f"over the {result['cap_gib']} GiB cap", ""
        elif row.get("failed") is not None:
            timing, size = f"failed (exit {row['failed']})", ""
        else:
            timing, size = f"{row['step_seconds']:.3f}", f"{row['parameters']:,}"
        baseline = f"{row['baseline_gib']:.2f}" if "baseline_gib" in row else ""
        lines.append(f"| {row['layout']} | {row['length']:,} | {row['part']} | {size} | {timing} | "
                     f"{row['peak_gib']:.2f} | {baseline} |")
    fits = growth(result)
    if fits:
        lines += ["", f"Growth (log-log slope against the length; 1 = linear) and where a straight-line fit of the "
                  f"peak memory reaches this machine's {result['memory_gib']:.0f} GiB:", "",
                  "| part | time slope | memory slope (above the baseline) | GiB per million entries | length at the "
                  "machine's memory |", "|---|---|---|---|---|"]
        for part, fit in fits.items():
            end = f"{fit['length_at_memory']:,.0f}" if fit["length_at_memory"] else "not reached"
            lines.append(f"| {part} | {fit['time_slope']:.2f} | {fit['memory_slope']:.2f} | "
                         f"{fit['gib_per_million']:.2f} | {end} |")
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
    try:
        measured = worker(args.worker, args.length, args.rows, args.steps, args.repeats, args.params)
    except (MemoryError, RuntimeError) as error:  # the memory limit refused an allocation
        if isinstance(error, RuntimeError) and "alloc" not in str(error):
            raise
        measured = {"part": args.worker, "length": args.length, "over_cap": True}
    print(json.dumps(measured))
