"""The generator bundle: everything generation needs, in one folder, with a spec that is checked at load.

Used by the `generate` CLI and by the registered MLflow model; it knows nothing of MLflow.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from condpdiff.artifacts import GeneratorFiles
from condpdiff.conditions import MiniLMTextEncoder, request_text
from condpdiff.config import BaseModelConfig, LoraConfig, Norm, Params
from condpdiff.generator import load_generator
from condpdiff.lora import Layout, base_model_path, build_peft_model, read_layouts, write_adapter

MAX_SAMPLES = 256
# what a checked request resolves to: its condition embedding, the stats row (None: condition-only), the
# layout of its head, num_labels
Checked = tuple[torch.Tensor, int | None, Layout, int]


class BundleError(ValueError):
    """A request or a bundle that cannot produce an adapter."""


def weights_fingerprint(model_name: str) -> str:
    """sha256 of the weights file of a local model folder ('' for hub names, checked by name only)."""
    folder = Path(base_model_path(model_name))
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.read_bytes())
    return digest.hexdigest() if files else ""


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_bundle(folder: Path, params: Params, files: GeneratorFiles, encoder: str) -> None:
    """Copy the trained parts into `folder` and write `spec.json`."""
    folder.mkdir(parents=True, exist_ok=True)
    for (_, source), (_, target) in zip(files.items(), GeneratorFiles.in_bundle(folder).items()):
        shutil.copy(source, target)
    spec = {
        "tasks": list(params.data.tasks), "norm": params.norm.value, "seed": params.seed,
        "condition_type": params.conditions.type.value, "encoder": encoder,
        "encoder_fingerprint": weights_fingerprint("minilm") if encoder.startswith("sentence-transformers") else "",
        "base_model": params.base.name, "base_fingerprint": weights_fingerprint(params.base.name),
        "max_length": params.base.max_length,
        "lora": {"r": params.lora.r, "alpha": params.lora.alpha, "target_modules": params.lora.target_modules},
        "sampler": params.generate.sampler.value, "inference_steps": params.generate.inference_steps,
        "guidance": params.generate.guidance,
    }
    (folder / "spec.json").write_text(json.dumps(spec, indent=1))


@dataclass
class Request:
    task: str | None = None
    description: str | None = None
    examples: list[str] | None = None
    num_labels: int = 2
    stats_task: str | None = None
    num_samples: int = 1
    seed: int = 0
    sampler: str | None = None
    steps: int | None = None


class GeneratorBundle:
    def __init__(self, folder: Path):
        folder = Path(folder)
        files = GeneratorFiles.in_bundle(folder)
        missing = [path.name for path in files.missing()] + ([] if (folder / "spec.json").is_file() else ["spec.json"])
        if missing:
            raise BundleError(f"generator bundle {folder} lacks {missing}")
        self.spec = json.loads((folder / "spec.json").read_text())
        self._check_installed()
        self.generator = load_generator(files)
        with safe_open(str(files.conditions), "pt") as handle:
            self.conditions = handle.get_tensor("conditions")
        self.layouts, _, self.num_labels = read_layouts(files.layout)
        self.base = BaseModelConfig(self.spec["base_model"], self.spec["max_length"])
        self.lora = LoraConfig(**self.spec["lora"])
        self._encoder = None
        self._models: dict[int, object] = {}
        # a server calls one bundle from many threads: the shared PEFT models (load a vector, save it) and the
        # tokenizer (its truncation state) must not interleave; sampling has its own RNG and runs unlocked
        self._lock = threading.Lock()

    def _check_installed(self) -> None:
        if self.spec["base_fingerprint"] and weights_fingerprint(self.spec["base_model"]) != self.spec["base_fingerprint"]:
            raise BundleError(f"the installed base model {self.spec['base_model']!r} differs from the one this "
                              "generator was trained on (weights fingerprint mismatch)")
        if self.spec["encoder_fingerprint"] and weights_fingerprint("minilm") != self.spec["encoder_fingerprint"]:
            raise BundleError(f"the installed condition encoder differs from {self.spec['encoder']!r}")

    def _condition(self, request: Request) -> Checked:
        """(condition vector, index of the normalization stats, layout, num_labels)"""
        tasks = self.spec["tasks"]
        if request.task is not None and request.description is None:
            if request.task not in tasks:
                raise BundleError(f"unknown task {request.task!r}: known {tasks}; or give a description")
            index = tasks.index(request.task)
            return self.conditions[index], index, self.layouts[request.task], self.num_labels[request.task]
        if not request.description or not request.description.strip():
            raise BundleError("give a known task or a non-empty description")
        if self.spec["condition_type"] not in ("text", "text_fewshot"):
            raise BundleError(f"this generator was trained on {self.spec['condition_type']} conditions: "
                              "it cannot read a free description")
        if self.spec["norm"] == Norm.cond.value:
            stats_index = None  # condition-only: the generator computes the task's mean from the text
        elif self.spec["norm"] == Norm.task.value:
            if request.stats_task not in tasks:
                raise BundleError("norm=task: a free description has no statistics of its own; name a known task's "
                                  f"with stats_task (one of {tasks})")
            stats_index = tasks.index(request.stats_task)
        else:
            stats_index = 0  # batch / none: every row of the stats is the same
        same_head = [t for t in tasks if self.num_labels[t] == request.num_labels]
        if not same_head:
            raise BundleError(f"no known task has num_labels={request.num_labels}: no layout for its head")
        text = request_text(request.description, request.examples)
        with self._lock:
            if self._encoder is None:
                self._encoder = MiniLMTextEncoder(self.base)
            condition = self._encoder.encode([text])[0]
        return condition, stats_index, self.layouts[same_head[0]], request.num_labels

    def check(self, request: Request) -> Checked:
        """Validate a request before any generation; returns what `_condition` resolves."""
        if not 1 <= request.num_samples <= MAX_SAMPLES:
            raise BundleError(f"num_samples must be in 1..{MAX_SAMPLES}, got {request.num_samples}")
        if request.sampler not in (None, "ddpm", "ddim"):
            raise BundleError(f"sampler must be ddpm or ddim, got {request.sampler!r}")
        timesteps = self.generator.scheduler_config["num_train_timesteps"]
        if request.steps is not None and not 1 <= request.steps <= timesteps:
            raise BundleError(f"steps must be in 1..{timesteps} (the timesteps it was trained on), got {request.steps}")
        return self._condition(request)

    def work(self, request: Request) -> int:
        """Denoiser passes over single samples that `request` costs: num_samples x steps (x2 with guidance)."""
        passes = 2 if self.spec.get("guidance", 1.0) != 1.0 else 1
        return request.num_samples * (request.steps or self.spec["inference_steps"]) * passes

    def generate_vectors(self, request: Request, checked: Checked | None = None) -> tuple[torch.Tensor, Layout, int]:
        """`checked`: what `check(request)` returned, when the caller checked already (no second encoding)."""
        condition, stats_index, layout, num_labels = checked or self.check(request)
        vectors = self.generator.generate(
            condition, stats_index, layout.length, request.num_samples, request.sampler or self.spec["sampler"],
            request.steps or self.spec["inference_steps"], request.seed, self.spec.get("guidance", 1.0))
        return vectors, layout, num_labels

    def write_adapters(self, request: Request, out: Path, checked: Checked | None = None) -> list[Path]:
        """PEFT adapter folders out/adapter_00, ... (the layout of the `generate` stage)."""
        vectors, layout, num_labels = self.generate_vectors(request, checked)
        folders = [Path(out) / f"adapter_{k:02d}" for k in range(len(vectors))]
        with self._lock:
            if num_labels not in self._models:
                self._models[num_labels] = build_peft_model(self.base, self.lora, num_labels, self.spec["seed"])
            for vector, folder in zip(vectors, folders):
                write_adapter(self._models[num_labels], vector, layout, folder)
        return folders

    def adapter_files(self, request: Request, checked: Checked | None = None) -> list[dict[str, bytes]]:
        """The same adapters as bytes: {'adapter_config.json': ..., 'adapter_model.safetensors': ...}."""
        with tempfile.TemporaryDirectory() as tmp:
            return [
                {name: (folder / name).read_bytes() for name in ("adapter_config.json", "adapter_model.safetensors")}
                for folder in self.write_adapters(request, Path(tmp), checked)
            ]
