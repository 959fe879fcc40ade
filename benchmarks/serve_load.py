"""A bounded load test of the served generator on loopback: `mlflow models serve` of a registered version,
N requests C at a time, each answer checked against the same request made alone beforehand (same seed, same
bytes), and `/ping` polled all along. Reports p50/p99 latency, throughput and every failure.

    python benchmarks/serve_load.py --model models:/condpdiff-generator@candidate --requests 200 --concurrency 4

Run it on a quiet machine after `dvc repro` (the register stage makes @candidate). The test suite runs a small
version on a tiny model.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import machine
from condpdiff import servers


def post(url: str, body: dict, timeout: float = 300) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def digests(answer: dict) -> list[str]:
    return [hashlib.sha256(base64.b64decode(row["adapter_model_safetensors_b64"])).hexdigest()
            for row in answer["predictions"]]


def bodies(tasks: list[str], seeds: int, steps: int) -> list[dict]:
    """The distinct requests the load cycles through: one DDIM adapter per (task, seed)."""
    return [{"dataframe_records": [{"task": task, "num_samples": 1, "seed": seed, "sampler": "ddim", "steps": steps}]}
            for task in tasks for seed in range(seeds)]


def load(url: str, distinct: list[dict], requests: int, concurrency: int, ping_every: float = 0.5) -> dict:
    """Each distinct body once alone (the reference), then `requests` of them `concurrency` at a time."""
    reference = []
    for body in distinct:
        status, answer = post(url, body)
        if status != 200:
            raise RuntimeError(f"the reference request {body} failed with {status}: {answer}")
        reference.append(digests(answer))
    pings, ping_failures, ping_seconds, done = [0], [], [], threading.Event()

    def ping() -> None:
        while not done.is_set():
            start = time.perf_counter()
            try:
                urllib.request.urlopen(f"{url}/ping", timeout=10).read()
                ping_seconds.append(time.perf_counter() - start)
            except OSError as error:
                ping_failures.append(repr(error))
            pings[0] += 1
            done.wait(ping_every)

    def one(i: int) -> tuple[float, str | None]:
        start = time.perf_counter()
        try:
            status, answer = post(url, distinct[i % len(distinct)])
        except (OSError, ValueError) as error:  # a dropped connection, a timeout, a body that is not JSON
            return time.perf_counter() - start, f"request {i}: {error!r}"
        seconds = time.perf_counter() - start
        if status != 200:
            return seconds, f"request {i}: HTTP {status} {str(answer)[:200]}"
        if digests(answer) != reference[i % len(distinct)]:
            return seconds, f"request {i}: an adapter differs from the same request made alone"
        return seconds, None

    pinger = threading.Thread(target=ping, daemon=True)
    pinger.start()
    start = time.perf_counter()
    try:
        with ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(one, range(requests)))
    finally:
        done.set()
        pinger.join()
    wall = time.perf_counter() - start
    latencies = sorted(seconds for seconds, _ in results)
    return {
        "requests": requests, "concurrency": concurrency, "distinct_requests": len(distinct),
        "correct": sum(error is None for _, error in results), "errors": [e for _, e in results if e][:20],
        "p50_seconds": statistics.median(latencies),
        "p99_seconds": latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))],
        "max_seconds": latencies[-1], "wall_seconds": wall, "throughput_per_second": requests / wall,
        "pings": pings[0], "ping_failures": ping_failures[:20],
        "ping_max_seconds": max(ping_seconds) if ping_seconds else None,
    }


def serve(model_uri: str, folder: Path, env: dict | None = None):
    """`mlflow models serve` of `model_uri` as a user starts it; (process, url)."""
    port = servers.free_port()
    process = servers.start([sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager",
                             "local", "-h", "127.0.0.1", "-p", str(port)], folder / "serve.log",
                            url=f"http://127.0.0.1:{port}/ping", env=env, seconds=300)
    return process, f"http://127.0.0.1:{port}"


def run(model_uri: str, tasks: list[str], requests: int, concurrency: int, seeds: int, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        process, url = serve(model_uri, Path(folder))
        try:
            result = load(url, bodies(tasks, seeds, steps), requests, concurrency)
        finally:
            servers.stop(process)
    return {"model": model_uri, "sampler": "ddim", "steps": steps, **result}


def render(result: dict) -> str:
    lines = [
        "# Load test of the served generator (`mlflow models serve`, loopback)", "",
        f"{result['requests']} requests of one DDIM-{result['steps']} adapter each, {result['concurrency']} at a "
        f"time, cycling through {result['distinct_requests']} distinct (task, seed) requests; every answer compared "
        f"byte for byte with the same request made alone first. Model: `{result['model']}`."
        + (f" Load average before: {result['machine_before']['load_average']}." if "machine_before" in result else ""),
        "",
        "| correct | p50 s | p99 s | max s | throughput /s | /ping answered | /ping failed | slowest /ping s |",
        "|---|---|---|---|---|---|---|---|",
        f"| {result['correct']}/{result['requests']} | {result['p50_seconds']:.3f} | {result['p99_seconds']:.3f} | "
        f"{result['max_seconds']:.3f} | {result['throughput_per_second']:.2f} | "
        f"{result['pings'] - len(result['ping_failures'])} | {len(result['ping_failures'])} | "
        f"{result['ping_max_seconds'] or 0:.3f} |",
    ]
    if result["errors"]:
        lines += ["", "Failures:", *(f"- {error}" for error in result["errors"])]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="models:/condpdiff-generator@candidate")
    parser.add_argument("--tasks", nargs="+", default=["sst2", "mrpc", "stsb"])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=4, help="distinct seeds per task")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("reports/bench"))
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{Path('mlruns/mlflow.db').resolve()}")
    before = machine()
    result = run(args.model, args.tasks, args.requests, args.concurrency, args.seeds, args.steps)
    result = {**result, "machine_before": before, "load_average_after": list(os.getloadavg())}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_load.json").write_text(json.dumps(result, indent=1))
    (args.out / "serve_load.md").write_text(render(result))
    print(render(result))
    return 0 if result["correct"] == result["requests"] and not result["ping_failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
