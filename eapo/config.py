"""Typed, frozen configuration: one dataclass per `params.yaml` section.

Every option is documented where it is declared (as TRL's `GRPOConfig` does). Loading is strict: an unknown key, a
missing required key or a value of the wrong type fails at start with the dotted key in the message, before any compute.
Cross-field rules (G >= 2, batch divisible by G, alpha in [0, 1], ...) live in each class's `validate`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A bad params file: the message names the dotted key."""


# --------------------------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PathsConfig:
    """Every artifact path, declared once. `dvc.yaml` reads the same keys through `${paths.*}` templating."""

    prompts_train: str = "data/prepare/prompts_train.parquet"
    prompts_test: str = "data/prepare/prompts_test.parquet"
    prepare_summary: str = "data/prepare/summary.json"
    rollouts: str = "data/rollout/rollouts.parquet"
    rollout_metrics: str = "data/rollout/metrics.json"
    tokens: str = "data/annotate/tokens.parquet"
    quadrant_stats: str = "data/annotate/quadrant_stats.json"
    cmi: str = "data/annotate/cmi.parquet"
    annotate_plots: str = "data/annotate/plots"
    train_dir: str = "data/train"
    """Per variant: `<train_dir>/<variant>/` holds `model/` (HF checkpoint), `steps.parquet`, `curves.json`."""
    evaluate_dir: str = "data/evaluate"
    """Per model: `<evaluate_dir>/<name>/samples.parquet`."""
    metrics_dir: str = "data/metrics"
    """Per model: `<metrics_dir>/<name>.json`, read by `dvc metrics diff`."""
    report_dir: str = "data/report"
    model_cache: str = ".cache/models"
    """Where the embedded GGUF model is converted to safetensors once (git- and DVC-ignored)."""


@dataclass(frozen=True)
class ModelConfig:
    """The base policy and where it runs."""

    name_or_path: str = "smollm2-135m-instruct"
    """`smollm2-135m-instruct` (embedded GGUF), `tiny-random-llama` (tests), a local HF directory, or a hub id."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Never bfloat16 on CPUs without AVX512-BF16: it is ~50x slower than fp32 there."""
    device: str = "cpu"
    """`cpu`, `cuda`, `cuda:N` or `auto`."""
    threads: int | None = 2
    """torch intra-op threads; null leaves torch's default. On 2 loaded cores, 1-2 is right."""
    system_prompt: str | None = None
    """Replaces the chat template's default system prompt; null keeps the template's own."""
    instruction: str = "Give only the final answer as a number."
    """Appended to every question. SmolLM2-135M rarely writes \\boxed{}, so we ask for a bare number."""
    seed: int = 0
    """Seed for `tiny-random-llama` weights."""

    def validate(self, key: str) -> None:
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"{key}.threads must be >= 1 or null, got {self.threads}")


@dataclass(frozen=True)
class SyntheticConfig:
    """The embedded, verifiable arithmetic task."""

    enabled: bool = True
    n: int = 200
    """Number of distinct prompts generated before the train/test split."""
    families: dict[str, list[int]] = field(default_factory=lambda: {"add": [1, 2], "mul": [1]})
    """Family name -> difficulty levels (digits). Families: see `eapo.data.synthetic.FAMILIES`."""
    seed: int = 0

    def validate(self, key: str) -> None:
        if self.n < 1:
            raise ConfigError(f"{key}.n must be >= 1, got {self.n}")
        if not self.families:
            raise ConfigError(f"{key}.families must name at least one family")


@dataclass(frozen=True)
class SourceConfig:
    """One file of prompts with verifiable answers."""

    kind: str
    """`gsm8k`, `math500`, `aime24`, `amc23`, or generic `jsonl` / `parquet` / `csv`."""
    path: str
    name: str | None = None
    """The `source` column value; defaults to `kind`."""
    limit: int | None = None
    """Keep at most this many rows of the file (first rows)."""
    fields: dict[str, str] | None = None
    """Generic kinds: our field -> the file's column, at least `prompt` and `answer`."""
    split: Literal["train", "test", "both"] = "both"
    """Which split the rows go to: `both` lets the seeded split decide."""


@dataclass(frozen=True)
class PrepareConfig:
    seed: int = 0
    """Seed of the train/test split."""
    test_fraction: float = 0.25
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    sources: list[SourceConfig] = field(default_factory=list)
    max_prompt_chars: int | None = 2000
    """Drop prompts longer than this (null keeps all)."""

    def validate(self, key: str) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"{key}.test_fraction must be in (0, 1), got {self.test_fraction}")
        if not self.synthetic.enabled and not self.sources:
            raise ConfigError(f"{key}: no data: synthetic.enabled is false and sources is empty")


@dataclass(frozen=True)
class SamplingConfig:
    """How responses are drawn. Shared shape for rollout, train and evaluate."""

    group_size: int = 4
    """G: responses per prompt. GRPO needs G >= 2 for a non-zero advantage."""
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 32
    batch_size: int = 64
    """Sequences decoded together."""
    backend: Literal["fast", "generate"] = "fast"
    """`fast`: our KV-cache decode loop that drops finished rows; `generate`: transformers' model.generate."""

    def validate(self, key: str) -> None:
        if self.group_size < 1:
            raise ConfigError(f"{key}.group_size must be >= 1, got {self.group_size}")
        if self.temperature <= 0:
            raise ConfigError(f"{key}.temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"{key}.top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"{key}.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ConfigError(f"{key}.batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class RolloutConfig(SamplingConfig):
    num_prompts: int | None = 16
    """Training prompts to roll out (first N of prompts_train in id order); null = all."""
    seed: int = 0

    def validate(self, key: str) -> None:
        super().validate(key)
        if self.group_size < 2:
            raise ConfigError(f"{key}.group_size must be >= 2 (GRPO groups), got {self.group_size}")


@dataclass(frozen=True)
class RewardConfig:
    fallback: Literal["last_number", "answer_is", "none"] = "last_number"
    """Answer extraction when there is no \\boxed{}: `answer_is` ("the answer is X"), `last_number`, or `none`."""
    timeout_s: float = 5.0
    """Per-answer wall-clock limit of the math-verify check (enforced by killing the worker process)."""
    workers: int = 2
    """Reward worker processes."""

    def validate(self, key: str) -> None:
        if self.timeout_s <= 0:
            raise ConfigError(f"{key}.timeout_s must be > 0, got {self.timeout_s}")
        if self.workers < 1:
            raise ConfigError(f"{key}.workers must be >= 1, got {self.workers}")


@dataclass(frozen=True)
class CMIConfig:
    """The Monte-Carlo probe of I(y_t; R | h_t), DESIGN §4."""

    positions: int = 16
    """Probed positions: `high_share` of them drawn at H >= tau, the rest below, each spread over its entropy range."""
    k: int = 4
    """Alternative tokens drawn at each probed position."""
    m: int = 8
    """Continuations per alternative token. Below M = 8 even the jackknife's bias reaches ±0.04 nats (measured in
    eapo.core.cmi); k = 4, m = 8 is calibrated within ±0.015 and costs 2x the continuations of k = m = 4."""
    max_new_tokens: int = 24
    bootstrap: int = 200
    """Resamples for each position's interval and for the high-vs-low comparison."""
    ci: float = 0.9
    seed: int = 0
    estimator: str = "jackknife"
    """CMI estimator by name (eapo.core.cmi.CMI_ESTIMATORS): `jackknife` (bias-corrected, needs k, m >= 2),
    `miller_madow`, or `plugin` (biased upward at small m)."""
    high_share: float = 0.5
    """Share of the probed positions drawn at H >= tau (the rest below), so the high-vs-low comparison has both."""

    def validate(self, key: str) -> None:
        for name in ("positions", "k", "m", "max_new_tokens", "bootstrap"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{key}.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.ci < 1:
            raise ConfigError(f"{key}.ci must be in (0, 1), got {self.ci}")
        if not 0 <= self.high_share <= 1:
            raise ConfigError(f"{key}.high_share must be in [0, 1], got {self.high_share}")
        from eapo.core.cmi import CMI_ESTIMATORS, min_shape  # the registry is the authority on names

        if self.estimator not in CMI_ESTIMATORS:
            raise ConfigError(f"{key}.estimator: unknown CMI estimator {self.estimator!r}; "
                              f"known: {sorted(CMI_ESTIMATORS)}")
        min_k, min_m = min_shape(self.estimator)
        if self.k < min_k or self.m < min_m:
            raise ConfigError(f"{key}: estimator {self.estimator!r} needs k >= {min_k} and m >= {min_m}, "
                              f"got k={self.k}, m={self.m}")


@dataclass(frozen=True)
class AnnotateConfig:
    advantage: str = "grpo"
    """Advantage estimator by name: `grpo` (group z-score) or `dr_grpo` (mean-centred)."""
    rho: float = 0.2
    """High-entropy share: tau is the (1 - rho) quantile of token entropy over the batch."""
    tau: float | None = None
    """A fixed entropy threshold in nats; null uses the batch quantile."""
    chunk_size: int = 256
    """Tokens per chunk in the entropy/log-prob computation (bounds peak memory)."""
    cmi: CMIConfig = field(default_factory=CMIConfig)

    def validate(self, key: str) -> None:
        if not 0 < self.rho <= 1:
            raise ConfigError(f"{key}.rho must be in (0, 1], got {self.rho}")
        if self.chunk_size < 1:
            raise ConfigError(f"{key}.chunk_size must be >= 1, got {self.chunk_size}")


@dataclass(frozen=True)
class TrainConfig(SamplingConfig):
    """Online RLVR, shared by every variant. Sampling keys (group_size, temperature, ...) are the rollouts'."""

    steps: int = 10
    """Optimizer steps; each samples a fresh batch from the current policy."""
    prompts_per_step: int = 4
    lr: float = 4.0e-5
    """4e-5 moves a 135M model within 10 steps of 16 samples on CPU; the paper-scale 1e-6 does not."""
    weight_decay: float = 0.0
    warmup_steps: int = 0
    ppo_epochs: int = 1
    minibatches: int = 1
    """Optimizer updates per epoch: the batch's sequences are split into this many minibatches."""
    micro_batch_size: int = 8
    """Sequences per forward/backward; gradients are accumulated up to a minibatch."""
    clip_low: float = 0.2
    clip_high: float = 0.28
    """DAPO clip-higher: the upper clip is looser than the lower."""
    agg: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] = "token_mean"
    advantage: str = "grpo"
    rho: float = 0.2
    """Quadrant threshold (top rho of entropy per batch) for per-step statistics and the top_entropy weighting."""
    kl_coef: float = 0.0
    """KL to the frozen reference policy (k3 estimator); 0 = off and no reference model is kept."""
    max_grad_norm: float = 1.0
    checkpoint_every: int = 5
    """Save model, optimizer, scheduler and RNG state every N steps (and at the end)."""
    chunk_size: int = 256
    seed: int = 0
    reuse_rollouts: bool = True
    """Step 0 reuses the rollout stage's samples when the rollout params equal these (the policy is unchanged)."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Passed to accelerate. `no` on CPU."""

    def validate(self, key: str) -> None:
        super().validate(key)
        if self.group_size < 2:
            raise ConfigError(f"{key}.group_size must be >= 2 (GRPO needs a group), got {self.group_size}")
        if self.lr <= 0:
            raise ConfigError(f"{key}.lr must be > 0, got {self.lr}")
        positive = ("steps", "prompts_per_step", "ppo_epochs", "minibatches", "micro_batch_size",
                    "checkpoint_every", "chunk_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{key}.{name} must be >= 1, got {getattr(self, name)}")
        batch = self.prompts_per_step * self.group_size
        if batch % self.minibatches:
            raise ConfigError(f"{key}.minibatches ({self.minibatches}) must divide the batch "
                              f"prompts_per_step*group_size = {batch}")
        if not 0 <= self.clip_low < 1 or self.clip_high < 0:
            raise ConfigError(f"{key}.clip_low must be in [0, 1) and clip_high >= 0")
        if not 0 < self.rho <= 1:
            raise ConfigError(f"{key}.rho must be in (0, 1], got {self.rho}")
        if self.kl_coef < 0 or self.max_grad_norm <= 0 or self.weight_decay < 0 or self.warmup_steps < 0:
            raise ConfigError(f"{key}: kl_coef, weight_decay, warmup_steps must be >= 0 and max_grad_norm > 0")


@dataclass(frozen=True)
class VariantConfig:
    """One training variant: a token weighting and a policy loss, each by registry name, and their parameters."""

    weighting: str
    """`none`, `top_entropy`, `drop_quadrant`, `keep_quadrant`, `eapo` (see `eapo.core.weighting`)."""
    rho: float | None = None
    quadrant: str | None = None
    alpha: float | None = None
    alpha_neg: float | None = None
    """EAPO: a separate alpha for negative-advantage responses; null uses alpha."""
    phi: float | None = None
    policy_loss: str = "ppo_clip"
    """Policy loss by name (`eapo.core.losses.POLICY_LOSSES`): `ppo_clip` (the clipped surrogate: GRPO and the
    weightings), `clip_cov`, `kl_cov` (Cui et al. 2025) or `entropy_bonus` (entropy regularisation)."""
    loss_params: dict[str, float] = field(default_factory=dict)
    """Parameters of `policy_loss`, e.g. `{clip_ratio: 2.0e-4, clip_cov_lb: 1.0, clip_cov_ub: 5.0}` (clip_cov),
    `{kl_cov_ratio: 2.0e-4, ppo_kl_coef: 1.0}` (kl_cov), `{coef: 1.0e-3}` (entropy_bonus); omitted keys take the
    published defaults documented on each loss."""

    def weighting_params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("weighting", "policy_loss", "loss_params") and getattr(self, f.name) is not None}

    def validate(self, key: str) -> None:
        from eapo.core.losses import build_policy_loss  # the registries are the authority on names and ranges
        from eapo.core.weighting import build_weighting

        try:
            build_weighting(self.weighting, **self.weighting_params())
            build_policy_loss(self.policy_loss, **self.loss_params)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{key}: {exc}") from exc


@dataclass(frozen=True)
class StudyConfig:
    variants: list[str] = field(default_factory=lambda: ["grpo", "top20", "eapo", "drop_pos_high", "drop_pos_low",
                                                         "drop_neg_high", "drop_neg_low"])
    """The variants trained, evaluated and reported: the DVC matrix. Each must be a key of `variants`."""


@dataclass(frozen=True)
class BenchmarkConfig:
    name: str
    kind: str
    path: str
    limit: int | None = None
    fields: dict[str, str] | None = None


@dataclass(frozen=True)
class EvaluateConfig(SamplingConfig):
    num_prompts: int | None = 50
    """Test prompts evaluated (first N in id order); null = all."""
    k: int = 2
    """Samples per prompt for avg@k / pass@k (group_size is ignored here)."""
    greedy: bool = True
    """Also decode greedily once per prompt for greedy accuracy."""
    seed: int = 1234
    benchmarks: list[BenchmarkConfig] = field(default_factory=list)
    """Extra evaluation sets (e.g. GSM8K test) read from files the user gives."""

    def validate(self, key: str) -> None:
        super().validate(key)
        if self.k < 1:
            raise ConfigError(f"{key}.k must be >= 1, got {self.k}")


@dataclass(frozen=True)
class ReportConfig:
    bootstrap: int = 2000
    ci: float = 0.95
    seed: int = 0
    reward_threshold: float = 0.5
    """Sample efficiency: the first step whose training reward reaches this."""


SECTIONS: dict[str, type] = {
    "paths": PathsConfig,
    "model": ModelConfig,
    "prepare": PrepareConfig,
    "rollout": RolloutConfig,
    "reward": RewardConfig,
    "annotate": AnnotateConfig,
    "train": TrainConfig,
    "study": StudyConfig,
    "evaluate": EvaluateConfig,
    "report": ReportConfig,
}


@dataclass(frozen=True)
class Params:
    """The whole `params.yaml`. `raw` keeps the parsed YAML for lineage (params subsets and their hash)."""

    paths: PathsConfig
    model: ModelConfig
    prepare: PrepareConfig
    rollout: RolloutConfig
    reward: RewardConfig
    annotate: AnnotateConfig
    train: TrainConfig
    study: StudyConfig
    evaluate: EvaluateConfig
    report: ReportConfig
    variants: dict[str, VariantConfig]
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    def subset(self, *keys: str) -> dict[str, Any]:
        """The raw params under dotted `keys` (as DVC's `params:` lists them), for lineage."""
        out: dict[str, Any] = {}
        for key in keys:
            node: Any = self.raw
            for part in key.split("."):
                node = node[part]
            out[key] = node
        return out


# --------------------------------------------------------------------------------------------------------------------
# Strict loading
# --------------------------------------------------------------------------------------------------------------------


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is Literal:
        if value is False and "no" in args:
            value = "no"  # YAML 1.1 (and tools that rewrite params.yaml, like `dvc exp run -S`) read a bare no as false
        if value not in args:
            raise ConfigError(f"{key} must be one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {type(value).__name__}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {type(value).__name__}")
        return {_coerce(k, args[0], key): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")


def _build(cls: type, data: Any, key: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{key} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key {key}.{unknown[0]} (known: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], f"{key}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required key {key}.{name}")
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate(key)
    return obj


def params_from_dict(raw: dict[str, Any]) -> Params:
    """Build and validate `Params` from a parsed params.yaml."""
    if not isinstance(raw, dict):
        raise ConfigError("params file must be a mapping of sections")
    known = set(SECTIONS) | {"variants"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown section {unknown[0]} (known: {', '.join(sorted(known))})")
    sections = {name: _build(cls, raw.get(name), name) for name, cls in SECTIONS.items()}
    variants_raw = raw.get("variants") or {}
    if not isinstance(variants_raw, dict):
        raise ConfigError("variants must be a mapping of variant name -> settings")
    variants = {name: _build(VariantConfig, v, f"variants.{name}") for name, v in variants_raw.items()}
    for i, name in enumerate(sections["study"].variants):
        if name not in variants:
            raise ConfigError(f"study.variants[{i}]: unknown variant {name!r} (defined: {', '.join(variants)})")
    return Params(**sections, variants=variants, raw=raw)


def load_params(path: str | Path = "params.yaml", overrides: dict[str, Any] | None = None) -> Params:
    """Read and validate a params file; `overrides` maps dotted keys to values (like `dvc exp run -S`)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"params file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    for dotted, value in (overrides or {}).items():
        set_dotted(raw, dotted, value)
    try:
        return params_from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node = raw
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def params_hash(subset: dict[str, Any]) -> str:
    """A stable hash of a params subset (canonical JSON)."""
    blob = json.dumps(subset, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
