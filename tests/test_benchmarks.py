"""The benchmark code runs and its tables say what the numbers say; no test asserts on a time."""
import json
import math
import sys

import numpy as np
import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import condpdiff.evaluation  # noqa: E402
import pipeline_profile  # noqa: E402
import run as bench_run  # noqa: E402
import sampler_quality  # noqa: E402
import scaling  # noqa: E402
from common import machine, median_seconds, parse_recipe  # noqa: E402


def test_median_seconds_needs_three_runs_and_reports_each():
    calls = []
    timing = median_seconds(lambda: calls.append(1), repeats=3)
    assert len(calls) == 4 and len(timing["runs"]) == 3 and timing["median"] in timing["runs"]
    with pytest.raises(ValueError, match="at least 3"):
        median_seconds(lambda: None, repeats=2)


def test_a_recipe_takes_its_defaults_for_the_fields_left_out_and_a_malformed_one_stops():
    kinds = (int, float, str)
    assert parse_recipe("500:0.5", kinds, ("off",), "steps:lr[:mode]") == (500, 0.5, "off")
    assert parse_recipe("500:0.5:on", kinds, ("off",), "steps:lr[:mode]") == (500, 0.5, "on")
    for bad in ("500", "500:0.5:on:4", "500:fast"):
        with pytest.raises(SystemExit, match="steps:lr"):
            parse_recipe(bad, kinds, ("off",), "steps:lr[:mode]")


def test_the_machine_record_names_its_load():
    box = machine()
    assert box["logical_cores"] >= 1 and len(box["load_average"]) == 3 and isinstance(box["other_heavy_processes"], list)


def test_a_scaling_worker_measures_and_the_cap_stops_one_that_grows():
    params = str(REPO / "profiles" / "tiny.yaml")
    row = scaling.measure("autoencoder", 3000, rows=8, steps=1, repeats=3, params_file=params, cap_gib=8.0)
    assert math.isfinite(row["step_seconds"]) and row["parameters"] > 0 and len(row["runs"]) == 3
    assert row["peak_gib"] >= row["baseline_gib"] > 0.05
    # the mean predictor's output layer at 2M entries needs 4 GiB for its weights alone; the imports fit in 2
    capped = scaling.measure("mean_predictor", 2_000_000, rows=8, steps=1, repeats=3, params_file=params, cap_gib=2.0)
    assert capped.get("over_cap") is True and capped["peak_gib"] < 2.5
    table = scaling.render({"rows_of_data": 8, "cap_gib": 2.0, "steps_per_timing": 1, "memory_gib": 24.0,
                            "results": [{"layout": "x", **row}, {"layout": "y", **capped}]})
    assert "over the 2.0 GiB cap" in table


def test_the_profile_counts_each_part_where_it_happens_and_unwraps_after():
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    backward = torch.Tensor.backward
    with pipeline_profile.split_timer(model) as spent:
        model(torch.randn(8, 4)).pow(2).mean().backward()
        optimizer.step()
        condpdiff.evaluation.compute_metrics("sst2", np.array([0, 1]), np.array([0, 1]))
    counted = {part for part, seconds in spent.items() if seconds > 0}
    assert counted == {"forward", "backward", "optimizer", "score"}  # nothing was tokenized
    assert torch.Tensor.backward is backward
    split = pipeline_profile.shares(spent, total=sum(spent.values()) * 2)
    assert split["rest"] == pytest.approx(0.5) and set(pipeline_profile.PARTS) <= set(split)


def test_growth_is_read_from_the_slopes():
    rows = [{"part": "autoencoder", "length": n, "step_seconds": 1e-6 * n, "peak_gib": 1.0 + n / 1e6,
             "baseline_gib": 1.0} for n in (10_000, 100_000, 1_000_000)]
    fit = scaling.growth({"results": rows, "memory_gib": 24.0})["autoencoder"]
    assert fit["time_slope"] == pytest.approx(1.0) and fit["memory_slope"] == pytest.approx(1.0)
    assert fit["length_at_memory"] == pytest.approx(23e6) and fit["gib_per_million"] == pytest.approx(1.0)


def test_the_fewest_ddim_steps_within_the_margin():
    result = {"reference": "DDPM-1000", "margin": 0.5, "samples": 10, "tasks": ["a", "b"], "averages": {
        "DDPM-1000": {"select_best": 70.0, "select_mean": 68.0, "eval_of_best": 65.0},
        "DDIM-10": {"select_best": 60.0, "select_mean": 58.0, "eval_of_best": 55.0},
        "DDIM-25": {"select_best": 69.6, "select_mean": 66.0, "eval_of_best": 64.0},
        "DDIM-50": {"select_best": 70.2, "select_mean": 67.6, "eval_of_best": 65.1}}}
    assert sampler_quality.smallest_within(result) == "DDIM-25"
    assert sampler_quality.smallest_within(result, "select_mean") == "DDIM-50"
    table = sampler_quality.render(result)
    assert "| DDIM-10 | 60.00 | -10.00 |" in table and "**DDIM-25**" in table


def test_the_page_renders_each_result_with_its_machine(tmp_path):
    box = {**machine(), "other_heavy_processes": [{"pid": 1, "cpu_percent": 95.0, "command": "python train.py"}]}
    result = {"rows_of_data": 8, "cap_gib": 8.0, "steps_per_timing": 1, "memory_gib": 24.0, "results": [
        {"layout": "MiniLM r=1", "part": "autoencoder", "length": 3000, "step_seconds": 0.01, "parameters": 10,
         "peak_gib": 0.3, "baseline_gib": 0.2}]}
    (tmp_path / "scaling.json").write_text(json.dumps({"benchmark": "scaling", "seconds": 60, "machine": box,
                                                       "load_average_after": [1, 1, 1], "result": result}))
    page = bench_run.render(tmp_path)
    assert "| MiniLM r=1 | 3,000 | autoencoder | 10 | 0.010 | 0.30 | 0.20 |" in page
    assert "python train.py (95%)" in page and "took 1.0 min" in page
