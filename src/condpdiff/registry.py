"""The generator as an MLflow model: pyfunc wrapper, registration and gated promotion (aliases)."""
from __future__ import annotations

import base64
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from condpdiff.artifacts import GeneratorFiles
from condpdiff.bundle import BundleError, GeneratorBundle, Request, file_digest, write_bundle
from condpdiff.config import Params

MODEL_NAME = "condpdiff-generator"
SELECT_METRIC = "select_average_generated_best"  # promotion compares this, never an eval score

INPUT_SCHEMA = Schema([
    ColSpec("string", "task", required=False), ColSpec("string", "description", required=False),
    ColSpec("string", "examples", required=False),  # JSON list of strings
    ColSpec("long", "num_labels", required=False), ColSpec("string", "stats_task", required=False),
    ColSpec("long", "num_samples", required=False), ColSpec("long", "seed", required=False),
    ColSpec("string", "sampler", required=False), ColSpec("long", "steps", required=False),
])
OUTPUT_SCHEMA = Schema([
    ColSpec("long", "row"), ColSpec("long", "sample"), ColSpec("string", "adapter_config"),
    ColSpec("string", "adapter_model_safetensors_b64"),
])


def _value(row: pd.Series, name: str, default=None):
    value = row.get(name, default)
    return default if value is None or (isinstance(value, float) and pd.isna(value)) else value


def request_from_row(row: pd.Series) -> Request:
    examples = _value(row, "examples")
    try:
        if isinstance(examples, str):
            examples = json.loads(examples)
        if examples is not None and not (isinstance(examples, list) and all(isinstance(e, str) for e in examples)):
            raise ValueError("examples must be a JSON list of strings")
        steps = _value(row, "steps")
        return Request(
            task=_value(row, "task"), description=_value(row, "description"), examples=examples,
            num_labels=int(_value(row, "num_labels", 2)), stats_task=_value(row, "stats_task"),
            num_samples=int(_value(row, "num_samples", 1)), seed=int(_value(row, "seed", 0)),
            sampler=_value(row, "sampler"), steps=None if steps is None else int(steps),
        )
    except (TypeError, ValueError) as error:  # json.JSONDecodeError is a ValueError
        raise BundleError(str(error)) from None


@dataclass(frozen=True)
class ServingLimits:
    """What one request may ask of a served generator. `work` counts denoiser passes over single samples,
    summed over rows: num_samples x sampler steps (x2 with guidance). On 2 cores 50,000 of them take about
    15 s (DDPM-1000 at K=100 measured 0.28 s per adapter), well inside the scoring server's 60 s timeout,
    after which it answers 504 but its worker thread would compute on. The body itself is read before the
    model sees it: cap its bytes in the proxy in front of the server (README, Running as a team)."""
    rows: int = 64
    work: int = 50_000
    text_chars: int = 4_000  # the encoder reads at most 256 tokens; longer text only costs
    examples: int = 16

    @classmethod
    def from_env(cls) -> "ServingLimits":
        values = {}
        for name in ("rows", "work", "text_chars", "examples"):
            raw = os.environ.get(f"CONDPDIFF_SERVE_MAX_{name.upper()}")
            if raw is not None:
                try:
                    values[name] = int(raw)
                except ValueError:
                    raise BundleError(f"CONDPDIFF_SERVE_MAX_{name.upper()} must be an integer, got {raw!r}") from None
        return cls(**values)

    def check_size(self, requests: list[Request]) -> None:
        """Rows and text lengths: checked before anything reads the text."""
        if len(requests) > self.rows:
            raise BundleError(f"{len(requests)} rows in one request; at most {self.rows}")
        for i, request in enumerate(requests):
            texts = [request.description or ""] + list(request.examples or [])
            longest = max(len(text) for text in texts)
            if longest > self.text_chars:
                raise BundleError(f"row {i}: a description or example of {longest} characters; at most {self.text_chars}")
            if len(request.examples or []) > self.examples:
                raise BundleError(f"row {i}: {len(request.examples)} examples; at most {self.examples}")

    def check_work(self, work: list[int]) -> None:
        if sum(work) > self.work:
            raise BundleError(f"the request asks for {sum(work)} sample-steps (num_samples x steps, summed over rows); "
                              f"at most {self.work}: ask for fewer samples or steps, or split the request")


def _each_row(items, action) -> list:
    """`action` on each row; an error names the row."""
    results = []
    for i, item in enumerate(items):
        try:
            results.append(action(item))
        except BundleError as error:
            raise BundleError(f"row {i}: {error}") from None
    return results


class GeneratorModel(mlflow.pyfunc.PythonModel):
    """Input: one condition per row. Output: one row per generated adapter."""

    def load_context(self, context) -> None:
        self.bundle = GeneratorBundle(Path(context.artifacts["bundle"]))
        self.limits = ServingLimits.from_env()

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        try:  # every row is checked before anything is generated
            requests = _each_row((row for _, row in model_input.iterrows()), request_from_row)
            self.limits.check_size(requests)
            checked = _each_row(requests, self.bundle.check)
            self.limits.check_work([self.bundle.work(request) for request in requests])
        except BundleError as error:  # the client reads the message; no trace, no server paths
            raise mlflow.exceptions.MlflowException.invalid_parameter_value(str(error)) from None
        rows = []
        for i, (request, resolved) in enumerate(zip(requests, checked)):
            for k, files in enumerate(self.bundle.adapter_files(request, resolved)):
                rows.append({"row": i, "sample": k, "adapter_config": files["adapter_config.json"].decode(),
                             "adapter_model_safetensors_b64": base64.b64encode(files["adapter_model.safetensors"]).decode()})
        return pd.DataFrame(rows)


def lineage_tags(files: GeneratorFiles, corpus_files: dict[str, Path]) -> dict[str, str]:
    """The digests of every generator file and every task's corpus file: a registry version names the exact
    bytes it was built from. sha256 for identity; md5 because that is DVC's key: it is the file's md5 in
    `dvc.lock` (the register stage's deps) and in the `outputs/corpus` listing, and its path in the DVC
    cache and remote (files/md5/<2>/<30>), so the corpus can be found and restored from a version."""
    named = {**{f"generator.{name}": path for name, path in files.items()},
             **{f"corpus.{task}": path for task, path in corpus_files.items()}}
    return {f"{algorithm}.{name}": file_digest(path, algorithm) for name, path in named.items()
            for algorithm in ("sha256", "md5")}


def register_generator(params: Params, files: GeneratorFiles, encoder: str, metrics: dict, tags: dict) -> str:
    """Log the bundle as a pyfunc model, register a new version, tag it and point `candidate` at it."""
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "bundle"
        write_bundle(bundle, params, files, encoder)
        info = mlflow.pyfunc.log_model(
            name="generator", python_model=GeneratorModel(), artifacts={"bundle": str(bundle)},
            signature=ModelSignature(inputs=INPUT_SCHEMA, outputs=OUTPUT_SCHEMA),
            registered_model_name=MODEL_NAME, pip_requirements=_requirements(),
        )
    client = mlflow.MlflowClient()
    version = str(info.registered_model_version)
    flat = {f"{split}_{key}": value for split in metrics for key, value in metrics[split].items()}
    for key, value in {**tags, **{k: f"{v:.4f}" for k, v in flat.items()}}.items():
        client.set_model_version_tag(MODEL_NAME, version, key, str(value))
    client.set_registered_model_alias(MODEL_NAME, "candidate", version)
    return version


def _requirements() -> list[str]:
    root = Path(__file__).resolve().parents[2] / "requirements.txt"
    if not root.is_file():
        return []
    return [line.split("#")[0].strip() for line in root.read_text().splitlines()
            if line.strip() and not line.startswith("#")]


class PromotionRefused(RuntimeError):
    pass


def _select_score(version) -> float:
    value = version.tags.get(SELECT_METRIC)
    if value is None:
        raise PromotionRefused(f"version {version.version} has no {SELECT_METRIC} tag: it cannot be compared")
    return float(value)


def promote(version: str | None = None, margin: float = 0.0, force: bool = False, reason: str | None = None) -> str:
    """Move @champion to `version` (default: @candidate) if it beats the champion on `select` by `margin`."""
    client = mlflow.MlflowClient()
    candidate = (client.get_model_version(MODEL_NAME, version) if version
                 else client.get_model_version_by_alias(MODEL_NAME, "candidate"))
    if force and not reason:
        raise PromotionRefused("--force needs --reason")
    try:
        champion = client.get_model_version_by_alias(MODEL_NAME, "champion")
    except mlflow.exceptions.MlflowException:
        champion = None
    if not force:
        score = _select_score(candidate)
        if champion is not None and champion.version != candidate.version:
            best = _select_score(champion)
            if score < best + margin:
                raise PromotionRefused(
                    f"version {candidate.version} scores {score:.2f} on select; champion version {champion.version} "
                    f"scores {best:.2f}; promotion needs at least {best + margin:.2f} (margin {margin})")
    client.set_registered_model_alias(MODEL_NAME, "champion", candidate.version)
    if force:
        client.set_model_version_tag(MODEL_NAME, candidate.version, "forced_promotion_reason", reason)
    return candidate.version
