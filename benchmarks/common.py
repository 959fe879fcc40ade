"""What every benchmark shares: the machine and its load, repeated timings, the pipeline's trained parts."""
from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import psutil
import torch

HEAVY_CPU_PERCENT = 20.0  # another process above this (sampled over a second) makes timings doubtful


def other_heavy_processes() -> list[dict]:
    """Processes other than this one (and its parents) that used more than HEAVY_CPU_PERCENT of a core over 1 s."""
    mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    processes = [p for p in psutil.process_iter(["pid", "name", "cmdline"]) if p.pid not in mine]
    for process in processes:
        try:
            process.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(1.0)
    heavy = []
    for process in processes:
        try:
            percent = process.cpu_percent(None)
        except psutil.Error:
            continue
        if percent > HEAVY_CPU_PERCENT:
            heavy.append({"pid": process.pid, "cpu_percent": percent,
                          "command": " ".join(process.info["cmdline"] or [process.info["name"] or "?"])[:120]})
    return heavy


def machine() -> dict:
    """The machine, its load and whatever else runs on it: printed beside every result."""
    return {
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": _cpu_model(),
        "logical_cores": psutil.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(psutil.virtual_memory().total / 2 ** 30, 1),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "other_heavy_processes": other_heavy_processes(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def median_seconds(action: Callable[[], object], repeats: int, warmup: int = 1) -> dict:
    """The median wall time of `action` over `repeats` runs after `warmup` untimed ones, and every run's time."""
    if repeats < 3:
        raise ValueError(f"timings repeat at least 3 times (got {repeats})")
    for _ in range(warmup):
        action()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return {"median": statistics.median(times), "runs": times}


def generator_files(outputs: Path):
    from condpdiff.artifacts import GeneratorFiles

    return GeneratorFiles.from_outputs(*(outputs / stage for stage in
                                         ("corpus", "normalized", "autoencoder", "conditions", "diffusion")))


def conditions(outputs: Path) -> torch.Tensor:
    from safetensors import safe_open

    with safe_open(str(generator_files(outputs).conditions), "pt") as handle:
        return handle.get_tensor("conditions")


def parse_recipe(text: str, kinds: tuple[Callable[[str], Any], ...], defaults: tuple, form: str) -> tuple:
    """A `--recipes` entry "a:b[:c]" -> its fields cast by `kinds`; the last `len(defaults)` fields may be
    left out and then take `defaults`. A malformed entry stops the study before any work."""
    parts = text.split(":")
    try:
        if not len(kinds) - len(defaults) <= len(parts) <= len(kinds):
            raise ValueError(text)
        return tuple(kind(part) for kind, part in zip(kinds, parts)) + defaults[len(defaults) - len(kinds) + len(parts):]
    except ValueError:
        raise SystemExit(f"--recipes: {text!r} is not {form}") from None
