"""The analysis figures' data on tiny shapes: distances, projections, trajectories, LoRA mixing, loss export.
The whole command runs on the tiny pipeline in test_pipeline.py."""
import math

import mlflow
import pytest
import torch

from condpdiff.figures import (MIN_TSNE_POINTS, embedding_rows, export_losses, interpolation_rows, trajectory_steps,
                               mix_lora, plot_similarity, read_csv, similarity_rows, trajectory_rows, write_csv)
from test_generator import _generator


def test_similarity_rows_measure_originals_against_the_other_checkpoints():
    corpus = torch.tensor([[0.0, 0.0], [3.0, 4.0], [3.0, 4.1]])
    generated = torch.tensor([[0.0, 1.0], [6.0, 8.0]])
    rows = similarity_rows("sst2", corpus, [10, 20, 30], {"20": 80.0, "10": 70.0}, generated, [60.0, 50.0],
                           generated[:1], [40.0])
    assert [(r["kind"], r["index"]) for r in rows] == [("original", 10), ("original", 20), ("generated", 0),
                                                     ("generated", 1), ("no_diffusion", 0)]
    assert rows[0]["distance"] == pytest.approx(5.0)  # step 10 -> its nearest other checkpoint, not itself
    assert rows[1]["distance"] == pytest.approx(0.1) and rows[1]["select"] == 80.0
    assert rows[3]["distance"] == pytest.approx(math.dist((6, 8), (3, 4.1)))
    with pytest.raises(ValueError, match="2 generated vectors but 1 select scores"):
        similarity_rows("sst2", corpus, [10, 20, 30], {}, generated, [60.0], generated, [1.0, 2.0])


def test_embedding_says_which_projection_it_used():
    torch.manual_seed(0)
    few = embedding_rows("rte", {"original": torch.randn(8, 20), "generated": torch.randn(3, 20)}, seed=0)
    assert {r["method"] for r in few} == {"pca"} and len(few) == 11
    assert [r["kind"] for r in few].count("generated") == 3
    many = embedding_rows("rte", {"original": torch.randn(MIN_TSNE_POINTS, 20), "generated": torch.randn(4, 20)}, 0)
    assert {r["method"] for r in many} == {"tsne"} and all(math.isfinite(r["x"] + r["y"]) for r in many)


def test_trajectory_steps_are_spaced_and_end_on_the_finished_sample():
    timesteps = list(range(999, -1, -1))
    kept = trajectory_steps(timesteps, 10)
    assert len(kept) == 10 and kept[0] == 999 and kept[-1] == 0 and kept == sorted(kept, reverse=True)


def test_trajectories_follow_the_stage_batch_and_end_on_its_samples():
    length = 40
    generator = _generator(length)
    corpus = torch.randn(5, length) * 0.01
    condition = torch.tensor([1.0, 0.0, 0.0])
    calls = []
    rows, context, finished = trajectory_rows("sst2", generator, condition, 0, length, corpus,
                                              lambda v: calls.append(v) or 1.0, batch=3, samples=2, points=4,
                                              sampler="ddim", inference_steps=6, seed=3)
    assert len(rows) == 8 and len(calls) == 8  # 2 samples x 4 points, each scored once
    assert [r["kind"] for r in context] == ["original"] * 5 + ["soup"]
    stage = generator.generate(condition, 0, length, 3, "ddim", 6, 3)  # the stage's own batch of 3
    assert torch.equal(finished, stage)
    assert torch.allclose(calls[3], stage[0]) and torch.allclose(calls[7], stage[1])  # sample-major, last = finished
    last = [r for r in rows if r["position"] == 3]
    assert len({r["timestep"] for r in last}) == 1 and last[0]["timestep"] < rows[0]["timestep"]
    assert all(math.isfinite(v) for r in rows + context for v in r.values() if isinstance(v, float))
    with pytest.raises(ValueError, match="trajectories of 4 samples from a batch of 3"):
        trajectory_rows("sst2", generator, condition, 0, length, corpus, lambda v: 1.0, batch=3, samples=4, points=2,
                        sampler="ddim", inference_steps=6, seed=3)


def test_a_mixed_lora_keeps_the_target_head():
    mask = torch.tensor([True, True, True, False, False])
    target, other = torch.tensor([1.0, 1.0, 1.0, 5.0, 6.0]), torch.tensor([3.0, 3.0, 3.0, 9.0])
    mixed = mix_lora(target, other, 0.25, mask)
    assert mixed.tolist() == [1.5, 1.5, 1.5, 5.0, 6.0]
    with pytest.raises(ValueError, match="LoRA entries first"):
        mix_lora(target, other, 0.5, torch.tensor([False, True, True, True, False]))


def test_interpolation_runs_between_the_two_best_samples():
    generated = torch.tensor([[0.0, 0.0, 7.0], [2.0, 2.0, 7.0], [4.0, 4.0, 7.0]])
    seen = []
    rows = interpolation_rows("mrpc", generated, [1.0, 3.0, 2.0], "rte", torch.tensor([8.0, 8.0, 1.0]),
                              torch.tensor([True, True, False]), lambda v: seen.append(v.tolist()) or 0.0, points=3)
    assert [r["l"] for r in rows if r["pair"] == "two generated"] == [0.0, 0.5, 1.0]
    assert seen[0] == [2.0, 2.0, 7.0] and seen[2] == [3.0, 3.0, 7.0] and seen[4] == [4.0, 4.0, 7.0]
    assert seen[5] == [8.0, 8.0, 7.0]  # l = 1 on the other task's LoRA: its LoRA, mrpc's head
    assert rows[1]["partner"] == "rte" and rows[0]["partner"] == "mrpc #2"


def test_csv_round_trip_and_a_plot_file(tmp_path):
    rows = [{"task": "sst2", "kind": "generated", "index": 0, "distance": 0.1, "select": 80.0},
            {"task": "sst2", "kind": "original", "index": 5, "distance": 0.01, "select": 81.0}]
    write_csv(rows, tmp_path / "s.csv")
    assert read_csv(tmp_path / "s.csv")[1]["select"] == "81.0"
    plot_similarity(read_csv(tmp_path / "s.csv"), tmp_path / "s.png")
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="no rows"):
        write_csv([], tmp_path / "empty.csv")


def test_loss_series_come_from_the_newest_finished_run_of_each_stage(tmp_path):
    client = mlflow.MlflowClient()
    experiment = client.create_experiment("losses")
    for value, status in ((5.0, "FINISHED"), (2.0, "FINISHED"), (9.0, "FAILED")):
        run = client.create_run(experiment, tags={"stage": "autoencoder"})
        for step in (50, 100):
            client.log_metric(run.info.run_id, "ae_train_mse", value / step * 50, step=step)
        client.set_terminated(run.info.run_id, status)
    run = client.create_run(experiment, tags={"stage": "collect", "task": "sst2"})
    client.log_metric(run.info.run_id, "train_loss", 0.7, step=1)
    client.set_terminated(run.info.run_id)
    written = export_losses(client, experiment, ["sst2", "rte"], tmp_path)
    assert sorted(p.name for p in written) == ["autoencoder.csv", "collect_sst2.csv"]
    rows = read_csv(tmp_path / "autoencoder.csv")
    assert list(rows[0]) == ["run_id", "step", "ae_train_mse"]  # the loss last: dvc plots' default y
    assert [float(r["ae_train_mse"]) for r in rows] == [2.0, 1.0]


def test_a_loss_series_of_another_configuration_is_named(tmp_path):
    client = mlflow.MlflowClient()
    experiment = client.create_experiment("configurations")
    runs = {}
    for name, tags, value in (("mine", {"stage": "autoencoder", "pipeline_id": "p1"}, 3.0),
                              ("newer", {"stage": "autoencoder", "pipeline_id": "p0"}, 4.0),
                              ("collect", {"stage": "collect", "task": "sst2", "pipeline_id": "p0"}, 0.7)):
        runs[name] = client.create_run(experiment, tags=tags).info.run_id
        client.log_metric(runs[name], "train_loss" if name == "collect" else "ae_train_mse", value, step=1)
        client.set_terminated(runs[name])
    said = []
    export_losses(client, experiment, ["sst2"], tmp_path, "p1", log=said.append)
    assert [float(r["ae_train_mse"]) for r in read_csv(tmp_path / "autoencoder.csv")] == [3.0]
    assert said == [f"losses: collect_sst2 comes from run {runs['collect']}, of another configuration than this one"]
