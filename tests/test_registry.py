"""The generator in a real MLflow registry (a real `mlflow server`) and behind `mlflow models serve`."""
import base64
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import urllib.request
from dataclasses import replace

import mlflow
import pytest
import torch
from peft import PeftModel
from safetensors.torch import save_file

from condpdiff import servers
from condpdiff.artifacts import GeneratorFiles
from condpdiff.autoencoder import Autoencoder, AutoencoderSpec, save_autoencoder
from condpdiff.bundle import BundleError, GeneratorBundle, Request, file_digest, write_bundle
from condpdiff.config import Norm
from condpdiff.denoiser import Denoiser, DenoiserSpec
from condpdiff.diffusion import make_scheduler, save_diffusion
from condpdiff.lora import build_peft_model, load_base_model, model_layout, save_layouts
from condpdiff.normalize import fit_normalizer
from condpdiff.registry import MODEL_NAME, PromotionRefused, lineage_tags, promote, register_generator
from conftest import REPO, TINY_PARAMS

sys.path.insert(0, str(REPO / "benchmarks"))
import serve_load  # noqa: E402

PARAMS = replace(TINY_PARAMS, norm=Norm.task,  # the parts below are task-normalized (the paper's protocol)
                 data=replace(TINY_PARAMS.data, tasks=["sst2", "stsb"]),
                 generate=replace(TINY_PARAMS.generate, inference_steps=4))


@pytest.fixture(scope="module")
def trained_parts(tmp_path_factory) -> GeneratorFiles:
    """Small random-init parts with the real MiniLM layouts: enough to exercise the registry."""
    folder = tmp_path_factory.mktemp("parts")
    torch.manual_seed(0)
    layouts = {t: model_layout(build_peft_model(PARAMS.base, PARAMS.lora, n, 0)) for t, n in (("sst2", 2), ("stsb", 1))}
    length = max(layout.length for layout in layouts.values())
    save_layouts(folder / "layout.json", layouts, length, {"sst2": 2, "stsb": 1})
    corpus = torch.randn(8, length) * 0.01
    fit_normalizer(Norm.task, corpus, torch.tensor([0] * 4 + [1] * 4), 2).save(folder / "stats.safetensors")
    save_autoencoder(Autoencoder(AutoencoderSpec(length, (4, 8), 2, 4, 0.001, 0.001)), folder / "model.pt")
    save_diffusion(Denoiser(DenoiserSpec(2, 384, (8, 16), 16, False, "shift", False)), make_scheduler(20, "linear"), 1.0,
                   folder / "diffusion.pt")
    conditions = torch.nn.functional.normalize(torch.randn(2, 384), dim=-1)
    save_file({"conditions": conditions}, str(folder / "conditions.safetensors"),
              metadata={"type": "text_fewshot", "encoder": "sentence-transformers/all-MiniLM-L6-v2", "tasks": "sst2,stsb"})
    return GeneratorFiles(folder / "model.pt", folder / "diffusion.pt", folder / "stats.safetensors",
                          folder / "conditions.safetensors", folder / "layout.json")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("server")
    server = servers.TrackingServer(f"sqlite:///{folder / 'mlflow.db'}", folder).start()
    try:
        yield server.url
    finally:
        server.stop()


def _register(parts, select_score: float) -> str:
    metrics = {"select": {"average_generated_best": select_score}, "eval": {"average_generated": select_score - 1}}
    with mlflow.start_run(run_name="register-test"):
        tags = {"pipeline_id": "test", **lineage_tags(parts, {"sst2": parts.stats})}
        return register_generator(PARAMS, parts, "sentence-transformers/all-MiniLM-L6-v2", metrics, tags)


def test_bundle_refuses_bad_requests(trained_parts, tmp_path):
    write_bundle(tmp_path / "bundle", PARAMS, trained_parts, "sentence-transformers/all-MiniLM-L6-v2")
    bundle = GeneratorBundle(tmp_path / "bundle")
    for request, message in [
        (Request(task="mnli"), "unknown task"), (Request(description="  "), "non-empty description"),
        (Request(task="sst2", num_samples=0), "num_samples"), (Request(task="sst2", num_samples=10_000), "num_samples"),
        (Request(task="sst2", steps=21), r"steps must be in 1\.\.20"), (Request(task="sst2", steps=0), "steps must be"),
        (Request(description="Classify tweets by sentiment."), "stats_task"),
        (Request(description="Rate news.", num_labels=5, stats_task="sst2"), "num_labels=5"),
    ]:
        with pytest.raises(BundleError, match=message):
            bundle.check(request)
    vectors, layout, labels = bundle.generate_vectors(Request(description="Classify tweets.", stats_task="sst2", seed=1))
    assert vectors.shape == (1, layout.length) and labels == 2
    spec = json.loads((tmp_path / "bundle" / "spec.json").read_text())
    (tmp_path / "bundle" / "spec.json").write_text(json.dumps({**spec, "base_fingerprint": "0" * 64}))
    with pytest.raises(BundleError, match="base model"):
        GeneratorBundle(tmp_path / "bundle")


@pytest.mark.slow  # a real `mlflow server`: ~30 s
def test_register_promote_refuse_force_and_load(mlflow_server, trained_parts, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_experiment("registry-test")
    client = mlflow.MlflowClient()
    better, worse = _register(trained_parts, 80.0), _register(trained_parts, 70.0)
    assert client.get_model_version_by_alias(MODEL_NAME, "candidate").version == worse
    assert promote(better) == better
    with pytest.raises(PromotionRefused, match="70.00.*80.00"):
        promote(worse)
    assert client.get_model_version_by_alias(MODEL_NAME, "champion").version == better
    with pytest.raises(PromotionRefused, match="margin"):
        promote(_register(trained_parts, 80.5), margin=1.0)
    assert client.get_model_version_by_alias(MODEL_NAME, "champion").version == better
    assert promote(worse, force=True, reason="rollback drill") == worse
    assert client.get_model_version(MODEL_NAME, worse).tags["forced_promotion_reason"] == "rollback drill"
    tags = client.get_model_version(MODEL_NAME, better).tags
    assert tags["select_average_generated_best"] == "80.0000" and tags["pipeline_id"] == "test"
    assert tags["sha256.generator.diffusion"] == file_digest(trained_parts.diffusion)  # lineage to the exact bytes
    assert tags["md5.corpus.sst2"] == hashlib.md5(trained_parts.stats.read_bytes()).hexdigest()  # DVC's key
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    out = model.predict({"task": ["sst2"], "num_samples": [2], "seed": [5]})
    assert list(out["sample"]) == [0, 1]


@pytest.fixture(scope="module")
def served(mlflow_server, trained_parts, tmp_path_factory):
    """@champion behind `mlflow models serve`, started as a user starts it (the load benchmark's launcher)."""
    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_experiment("registry-serve-test")
    promote(_register(trained_parts, 99.0), force=True, reason="the served version of this module")
    process, url = serve_load.serve(f"models:/{MODEL_NAME}@champion", tmp_path_factory.mktemp("serve"),
                                    env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_server})
    try:
        yield url
    finally:
        servers.stop(process)


@pytest.mark.slow  # `mlflow models serve` in a subprocess: ~30 s
def test_served_adapter_equals_cli_output_and_loads(served, mlflow_server, tmp_path):
    cli = subprocess.run([sys.executable, "-m", "condpdiff", "generate", "--model", f"models:/{MODEL_NAME}@champion",
                          "--task", "sst2", "--samples", "2", "--seed", "3", "--out", str(tmp_path / "cli")],
                         capture_output=True, text=True, env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_server})
    assert cli.returncode == 0, cli.stderr[-2000:]
    status, answer = serve_load.post(served, {"dataframe_records": [{"task": "sst2", "num_samples": 2, "seed": 3}]})
    assert status == 200, answer
    rows = answer["predictions"]
    assert len(rows) == 2
    served = base64.b64decode(rows[0]["adapter_model_safetensors_b64"])
    assert served == (tmp_path / "cli" / "adapter_00" / "adapter_model.safetensors").read_bytes()
    assert json.loads(rows[0]["adapter_config"]) == json.loads((tmp_path / "cli" / "adapter_00" / "adapter_config.json").read_text())
    folder = tmp_path / "served"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(served)
    (folder / "adapter_config.json").write_text(rows[0]["adapter_config"])
    model = PeftModel.from_pretrained(load_base_model(PARAMS.base, 2, seed=9), str(folder))
    result = model.load_adapter(str(folder), adapter_name="check")
    assert not result.unexpected_keys and not [k for k in result.missing_keys if "lora_" in k]


@pytest.mark.slow
def test_served_generator_refuses_what_it_cannot_do_with_a_readable_error(served):
    """400 with MLflow's invalid-parameter error naming the problem; no trace, no server paths; nothing computed."""
    row = {"task": "sst2", "num_samples": 1}
    for records, message in [
        ([{**row, "task": "mnli"}], "row 0: unknown task 'mnli'"),
        ([{**row, "num_samples": 100_000}], "num_samples must be in 1..256"),
        ([{**row, "num_samples": 256}] * 50, "51200 sample-steps"),  # 50 x 256 x 4 steps: over the 50,000 bound
        ([row] * 65, "65 rows"),
        ([{"description": "x" * 2_000_000}], "2000000 characters"),
        ([{**row, "examples": "not json"}], "Expecting value"),
        ([{**row, "examples": json.dumps([1, 2])}], "list of strings"),
        ([{**row, "steps": 0}], "steps must be in 1..20"),
    ]:
        status, answer = serve_load.post(served, {"dataframe_records": records})
        assert status == 400 and answer["error_code"] == "INVALID_PARAMETER_VALUE", (records[0], answer)
        assert message in answer["message"], answer["message"]
        assert "stack_trace" not in answer and "Traceback" not in answer["message"]
        assert str(REPO) not in answer["message"] and "site-packages" not in answer["message"]
    urllib.request.urlopen(f"{served}/ping", timeout=5)


@pytest.mark.slow
def test_concurrent_requests_get_the_bytes_each_gets_alone_and_ping_answers_throughout(served):
    """The small CI version of `benchmarks/serve_load.py`: 16 requests 4 at a time. One PEFT model per head is
    shared by the server's threads; without the bundle's lock two requests would save each other's weights."""
    result = serve_load.load(served, serve_load.bodies(["sst2", "stsb"], seeds=3, steps=4), requests=16, concurrency=4,
                             ping_every=0.2)
    assert result["correct"] == 16, result["errors"]
    assert result["pings"] >= 1 and not result["ping_failures"]
    assert 0 < result["p50_seconds"] <= result["p99_seconds"] <= result["max_seconds"]


def _condition_only_bundle(trained_parts, tmp_path) -> GeneratorBundle:
    """The registry's parts under norm=cond, with a mean predictor that reads the text."""
    from condpdiff.mean_predictor import MeanPredictor, MeanPredictorSpec

    folder = tmp_path / "parts"
    shutil.copytree(trained_parts.stats.parent, folder)
    length = json.loads((folder / "layout.json").read_text())["padded_length"]
    corpus = torch.randn(8, length) * 0.01
    fit_normalizer(Norm.cond, corpus, torch.tensor([0] * 4 + [1] * 4), 2).save(folder / "stats.safetensors")
    torch.manual_seed(1)
    mean = MeanPredictor(MeanPredictorSpec(384, 8, length))
    torch.nn.init.normal_(mean.net[-1].weight)  # a trained predictor reads the text; the zero init would not
    save_diffusion(Denoiser(DenoiserSpec(2, 384, (8, 16), 16, False, "shift", False)), make_scheduler(20, "linear"),
                   1.0, folder / "diffusion.pt", mean)
    parts = GeneratorFiles(*(folder / path.name for _, path in trained_parts.items()))
    write_bundle(tmp_path / "bundle", replace(PARAMS, norm=Norm.cond), parts, "sentence-transformers/all-MiniLM-L6-v2")
    return GeneratorBundle(tmp_path / "bundle")


def test_condition_only_bundle_reads_a_free_description_without_stats_task(trained_parts, tmp_path):
    """norm=cond: a description alone is a full request; the text, not a task's statistics, sets the mean."""
    bundle = _condition_only_bundle(trained_parts, tmp_path)
    one, layout, _ = bundle.generate_vectors(Request(description="Classify tweets by sentiment.", seed=1))
    two, _, _ = bundle.generate_vectors(Request(description="Rate how similar two sentences are.", seed=1))
    assert one.shape == (1, layout.length) and not torch.allclose(one, two)
    known, _, _ = bundle.generate_vectors(Request(task="sst2", seed=1))
    assert known.shape == one.shape


def test_free_conditions_are_scored_from_the_adapter_folders_a_user_loads(trained_parts, tmp_path):
    """`describe`: every typed condition gets K adapters, loaded by peft and scored on select, beside the own."""
    from condpdiff.freetext import render_free_table, score_free_conditions
    from condpdiff.glue import Example, write_jsonl

    bundle = _condition_only_bundle(trained_parts, tmp_path)
    texts = ["a fine film", "a dull mess", "great acting", "boring", "a joy", "awful"]
    write_jsonl(tmp_path / "prepared" / "sst2" / "select.jsonl", [Example(t, None, i % 2) for i, t in enumerate(texts)])
    write_jsonl(tmp_path / "prepared" / "stsb" / "select.jsonl",
                [Example(t, t[::-1], float(i)) for i, t in enumerate(texts)])
    conditions = {"sst2": [{"description": "sentiment"}, {"description": "Is it positive?", "examples": ["fun -> positive"]}],
                  "stsb": [{"description": "similarity"}, {"description": "Same meaning?", "examples": ["a [SEP] a -> 5.0"]}]}
    result = score_free_conditions(bundle, conditions, tmp_path / "prepared", samples=2, seed=3)
    for task, rows in result["tasks"].items():
        assert [r["description"] for r in rows] == ["own training condition"] + [c["description"] for c in conditions[task]]
        assert all(len(r["select"]) == 2 and all(math.isfinite(v) for v in r["select"]) for r in rows)
        assert rows[2]["minus_own"] == pytest.approx(rows[2]["select_mean"] - rows[0]["select_mean"])
    assert set(result["average"]) == {f"condition_{k}_select_mean" for k in range(3)}
    result.update(model="m", version="1", samples=2, seed=3)
    assert "| stsb | Same meaning? | a [SEP] a -> 5.0 |" in render_free_table(result, "x.yaml")
    with pytest.raises(ValueError, match="not trained on.*rte"):
        score_free_conditions(bundle, {"rte": [{"description": "entailment"}]}, tmp_path / "prepared", 1, 0)
