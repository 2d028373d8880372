"""Typed, frozen configuration: one dataclass per `params.yaml` section.

Every option is documented where it is declared (as TRL's `GRPOConfig` does). Loading is strict: an unknown key, a
missing required key or a value of the wrong type fails at start with the dotted key in the message, before any compute.

Single-field rules are declared on the field's type with `Annotated` (see the aliases below: `Count`, `Probability`,
`Positive`, ... and `Registered(...)` for names looked up in a registry), so a new field states its own range. Every
float must be finite. Cross-field rules (G >= 2, batch divisible by the minibatches, ...) live in each class's
`validate`. Floats are read in any notation a YAML writer produces (`1e-06`, `1.0e-6`, `1E-6`; YAML 1.1 alone reads
the first and last as strings).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml


class ConfigError(ValueError):
    """A bad params file: the message names the dotted key."""


# --------------------------------------------------------------------------------------------------------------------
# Field constraints, declared on the field's type: `x: Annotated[int, Range(1)] = 4`
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Range:
    """A numeric range: `lo <= v <= hi`, an end open (`<`) when `lo_open` / `hi_open`; None = unbounded."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def check(self, value: Any, key: str) -> None:
        bad_lo = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
        bad_hi = self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)
        if bad_lo or bad_hi:
            raise ConfigError(f"{key} must be {self.describe()}, got {value!r}")

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        return f"{'<' if self.hi_open else '<='} {self.hi:g}"


@dataclass(frozen=True)
class Registered:
    """A name that must be registered in the `eapo.core.registry.Registry` `module.attr` (looked up at load, so new
    registrations count). The registry owns the names and the error, which lists them."""

    module: str
    attr: str

    def check(self, value: Any, key: str) -> None:
        registry = getattr(importlib.import_module(self.module), self.attr)
        try:
            registry[value]
        except KeyError as exc:  # eapo.core.registry.UnknownName
            raise ConfigError(f"{key}: {exc}") from None


@dataclass(frozen=True)
class OneOf:
    """A name from a fixed tuple of names `module.attr` that is not a registry of implementations (record fields)."""

    module: str
    attr: str
    what: str

    def check(self, value: Any, key: str) -> None:
        names = getattr(importlib.import_module(self.module), self.attr)
        if value not in names:
            raise ConfigError(f"{key}: unknown {self.what} {value!r}; known: {', '.join(sorted(names))}")


@dataclass(frozen=True)
class TorchDevice:
    """`auto`, or a device string torch accepts (`cpu`, `cuda`, `cuda:1`, `mps`, ...)."""

    def check(self, value: Any, key: str) -> None:
        if value == "auto":
            return
        import torch

        try:
            torch.device(value)
        except (RuntimeError, TypeError, ValueError):
            raise ConfigError(f"{key}: unknown device {value!r}; expected auto, cpu, cuda, cuda:N or another torch "
                              f"device type") from None


Count = Annotated[int, Range(1)]
"""An integer >= 1."""
NonNegInt = Annotated[int, Range(0)]
Seed = Annotated[int, Range(0)]
"""A random seed: an integer >= 0 (numpy's generators reject negative seeds)."""
Positive = Annotated[float, Range(0, lo_open=True)]
"""A finite float > 0 (learning rates, temperatures, timeouts)."""
NonNegative = Annotated[float, Range(0)]
Probability = Annotated[float, Range(0, 1, lo_open=True, hi_open=True)]
"""A float in (0, 1) (fractions, confidence levels)."""
Share = Annotated[float, Range(0, 1, lo_open=True)]
"""A float in (0, 1]."""
AdvantageName = Annotated[str, Registered("eapo.core.advantages", "ADVANTAGES")]
AggregationName = Annotated[str, Registered("eapo.core.losses", "AGGREGATIONS")]
WeightingName = Annotated[str, Registered("eapo.core.weighting", "WEIGHTINGS")]
PolicyLossName = Annotated[str, Registered("eapo.core.losses", "POLICY_LOSSES")]
CMIEstimatorName = Annotated[str, Registered("eapo.core.cmi", "CMI_ESTIMATORS")]
SyntheticFamilyName = Annotated[str, Registered("eapo.data.synthetic", "FAMILIES")]
DeviceName = Annotated[str, TorchDevice()]
BackendName = Annotated[str, Registered("eapo.sampler", "BACKENDS")]
FieldName = Annotated[str, OneOf("eapo.data.importers", "FIELD_NAMES", "field")]


# --------------------------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PathsConfig:
    """Every artifact path, declared once. `dvc.yaml` reads the same keys through `${paths.*}` templating."""

    prompts_train: str = "data/prepare/prompts_train.parquet"
    """Training prompts (`prompts` contract), written by `prepare`."""
    prompts_test: str = "data/prepare/prompts_test.parquet"
    """Held-out prompts (`prompts` contract), written by `prepare`."""
    prepare_summary: str = "data/prepare/summary.json"
    """Prompt counts per source and split (a DVC metric)."""
    rollouts: str = "data/rollout/rollouts.parquet"
    """G responses per prompt with per-token log-prob and entropy (`rollouts` contract)."""
    rollout_metrics: str = "data/rollout/metrics.json"
    """Rollout accuracy, extraction rate, length and throughput (a DVC metric)."""
    tokens: str = "data/annotate/tokens.parquet"
    """One row per response token: entropy, advantage, quadrant (`tokens` contract)."""
    quadrant_stats: str = "data/annotate/quadrant_stats.json"
    """The Four Quadrant Decomposition: counts, shares, gradient shares (a DVC metric)."""
    cmi: str = "data/annotate/cmi.parquet"
    """The Monte-Carlo CMI probe (`cmi` contract)."""
    annotate_plots: str = "data/annotate/plots"
    """Plot CSVs (DVC plots) and PNGs of the annotate stage."""
    train_dir: str = "data/train"
    """Per variant: `<train_dir>/<variant>/` holds `model/` (HF checkpoint), `steps.parquet`, `curves.json`."""
    evaluate_dir: str = "data/evaluate"
    """Per model: `<evaluate_dir>/<name>/samples.parquet`."""
    metrics_dir: str = "data/metrics"
    """Per model: `<metrics_dir>/<name>.json`, read by `dvc metrics diff`."""
    report_dir: str = "data/report"
    """`report.md`, its `summary.json` metric, plot CSVs and PNGs."""
    model_cache: str = ".cache/models"
    """Where the embedded GGUF model is converted to safetensors once (git- and DVC-ignored). Under DVC a relative
    path is taken from the project root (`$DVC_ROOT`), so queued experiments (`dvc exp run --queue`), which run in
    copies under `.dvc/tmp/exps/`, share the project's cache; conversion holds a file lock, so it happens once."""


@dataclass(frozen=True)
class ModelConfig:
    """The base policy and where it runs."""

    name_or_path: str = "smollm2-135m-instruct"
    """`smollm2-135m-instruct` (embedded GGUF), `tiny-random-llama` (tests), a local HF directory, or a hub id."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Never bfloat16 on CPUs without AVX512-BF16: it is ~50x slower than fp32 there."""
    device: DeviceName = "cpu"
    """`cpu`, `cuda`, `cuda:N` or `auto` (any torch device string is accepted)."""
    threads: Count | None = 2
    """torch intra-op threads; null leaves torch's default. On 2 loaded cores, 1-2 is right. The environment variable
    `EAPO_THREADS` overrides it at run time without rerunning any stage: cores / N for `dvc queue start --jobs N`."""
    deterministic: bool = True
    """On CUDA: kernels that give the same bits on every run (`torch.use_deterministic_algorithms`, cuDNN's
    deterministic mode, cuBLAS's fixed workspace), so that a rerun of a stage reproduces its artifacts as on CPU.
    Without them, two trainings of the same seed on an H200 diverged from the first backward (atomic adds in the index
    and embedding gradients) and sampled different tokens from step 1 on (`benchmarks/bench_device.py`, which also
    measures the cost). With true, an op that has no deterministic CUDA kernel fails its stage with torch's error
    naming the op; false puts speed first. Nothing changes on CPU, which is deterministic already."""
    system_prompt: str | None = None
    """Replaces the chat template's default system prompt; null keeps the template's own."""
    instruction: str = "Give only the final answer as a number."
    """Appended to every question. SmolLM2-135M rarely writes \\boxed{}, so we ask for a bare number."""
    seed: Seed = 0
    """Seed for `tiny-random-llama` weights."""


@dataclass(frozen=True)
class SyntheticConfig:
    """The embedded, verifiable arithmetic task."""

    enabled: bool = True
    """Generate the synthetic prompts (false: only `prepare.sources`)."""
    n: Count = 200
    """Number of distinct prompts generated before the train/test split."""
    families: dict[SyntheticFamilyName, list[int]] = field(default_factory=lambda: {"add": [1, 2], "mul": [1]})
    """Family name -> difficulty levels (digits). Families: see `eapo.data.synthetic.FAMILIES`."""
    seed: Seed = 0
    """Seed of the generator."""

    def validate(self, key: str) -> None:
        if not self.families:
            raise ConfigError(f"{key}.families must name at least one family")
        import numpy as np

        from eapo.data.records import DataError
        from eapo.data.synthetic import FAMILIES

        for name, levels in self.families.items():
            if not levels:
                raise ConfigError(f"{key}.families.{name} must list at least one level")
            for i, level in enumerate(levels):
                try:  # the family itself knows its levels: draw one prompt
                    FAMILIES[name](np.random.default_rng(0), level)
                except DataError as exc:
                    raise ConfigError(f"{key}.families.{name}[{i}]: {exc}") from None


@dataclass(frozen=True)
class SourceConfig:
    """One file of prompts with verifiable answers."""

    kind: Annotated[str, Registered("eapo.data.importers", "IMPORTERS")]
    """`gsm8k`, `math500`, `aime24`, `amc23`, or generic `jsonl` / `parquet` / `csv`."""
    path: str
    """The file to read (JSON Lines, Parquet or CSV; named kinds take the format from the extension)."""
    name: str | None = None
    """The `source` column value; defaults to `kind`."""
    limit: Count | None = None
    """Keep at most this many rows of the file (first rows)."""
    fields: dict[FieldName, str] | None = None
    """Generic kinds: our field -> the file's column, at least `prompt` and `answer`."""
    split: Literal["train", "test", "both"] = "both"
    """Which split the rows go to: `both` lets the seeded split decide."""


@dataclass(frozen=True)
class PrepareConfig:
    """Stage `prepare`: the prompts and their seeded train/test split."""

    seed: Seed = 0
    """Seed of the train/test split."""
    test_fraction: Probability = 0.25
    """Share of the `both`-split prompts that go to the test split."""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    """The embedded arithmetic task."""
    sources: list[SourceConfig] = field(default_factory=list)
    """Prompt files with verifiable answers (benchmarks or your own)."""
    max_prompt_chars: Count | None = 2000
    """Drop prompts longer than this (null keeps all)."""

    def validate(self, key: str) -> None:
        if not self.synthetic.enabled and not self.sources:
            raise ConfigError(f"{key}: no data: synthetic.enabled is false and sources is empty")


@dataclass(frozen=True)
class SamplingConfig:
    """How responses are drawn. Shared shape for rollout, train and evaluate."""

    group_size: Count = 4
    """G: responses per prompt. GRPO needs G >= 2 for a non-zero advantage."""
    temperature: Positive = 1.0
    """Sampling temperature (> 0). Entropies and log-probs are always those of the policy at temperature 1."""
    top_p: Share = 1.0
    """Nucleus sampling mass in (0, 1]; 1 samples from the full distribution."""
    max_new_tokens: Count = 32
    """Response length limit in tokens."""
    batch_size: Count = 64
    """Sequences decoded together. Larger batches keep the matmuls busier for more KV-cache memory. Each batch draws
    from its own seeded generator, so the samples depend on it."""
    backend: BackendName = "fast"
    """Sampler backend by name (`eapo.sampler.BACKENDS`): `fast`, our KV-cache decode loop that drops finished
    rows; `generate`, transformers' model.generate."""


@dataclass(frozen=True)
class RolloutConfig(SamplingConfig):
    """Stage `rollout`: G responses per training prompt from the base policy."""

    num_prompts: Count | None = 16
    """Training prompts to roll out: the first N in the order training visits prompts_train with `seed` (so with
    `seed` equal to `train.seed` they include training's step-0 prompts, whose samples step 0 then reuses); null =
    all, in id order."""
    seed: Seed = 0
    """Seed of the sampling and of the prompt order (see `num_prompts`)."""

    def validate(self, key: str) -> None:
        if self.group_size < 2:
            raise ConfigError(f"{key}.group_size must be >= 2 (GRPO groups), got {self.group_size}")


@dataclass(frozen=True)
class RewardConfig:
    """The verifiable reward: answer extraction and the math-verify check."""

    fallback: Literal["last_number", "answer_is", "none"] = "last_number"
    """Answer extraction when there is no \\boxed{}: `answer_is` ("the answer is X"), `last_number`, or `none`."""
    timeout_s: Positive = 5.0
    """Per-answer wall-clock limit of answer extraction and checking together (enforced by killing the worker)."""
    workers: Count = 2
    """Reward worker processes."""
    score_truncated: bool = False
    """Grade responses cut at the token limit (finish reason `length`). False (default): they score 0 with failure
    `truncated`, the convention of DAPO's overlong filtering (a cut response has no final answer, and crediting it
    rewards rambling). True: they are graded, but never by the last-number fallback."""


@dataclass(frozen=True)
class CMIConfig:
    """The Monte-Carlo probe of I(y_t; R | h_t), DESIGN §4."""

    positions: Count = 16
    """Probed positions: `high_share` of them drawn at H >= tau, the rest below, each spread over its entropy range."""
    k: Count = 4
    """Alternative tokens drawn at each probed position."""
    m: Count = 8
    """Continuations per alternative token. Below M = 8 even the jackknife's bias reaches ±0.04 nats (measured in
    eapo.core.cmi); k = 4, m = 8 is calibrated within ±0.015 and costs 2x the continuations of k = m = 4."""
    max_new_tokens: Count = 24
    """Length limit of each continuation."""
    bootstrap: Count = 200
    """Resamples for each position's interval and for the high-vs-low comparison."""
    ci: Probability = 0.9
    """Confidence level of those intervals, in (0, 1)."""
    seed: Seed = 0
    """Seed of the probe's sampling and bootstrap."""
    estimator: CMIEstimatorName = "jackknife"
    """CMI estimator by name (eapo.core.cmi.CMI_ESTIMATORS): `jackknife` (bias-corrected, needs k, m >= 2),
    `miller_madow`, or `plugin` (biased upward at small m)."""
    high_share: Annotated[float, Range(0, 1)] = 0.5
    """Share of the probed positions drawn at H >= tau (the rest below), so the high-vs-low comparison has both."""

    def validate(self, key: str) -> None:
        from eapo.core.cmi import min_shape

        min_k, min_m = min_shape(self.estimator)
        if self.k < min_k or self.m < min_m:
            raise ConfigError(f"{key}: estimator {self.estimator!r} needs k >= {min_k} and m >= {min_m}, "
                              f"got k={self.k}, m={self.m}")


@dataclass(frozen=True)
class AnnotateConfig:
    """Stage `annotate`: entropy annotation, the Four Quadrant Decomposition and the CMI probe."""

    advantage: AdvantageName = "grpo"
    """Advantage estimator by name (`eapo.core.advantages`): `grpo` (group z-score), `dr_grpo` (mean-centred), ..."""
    rho: Share = 0.2
    """High-entropy share: tau is the (1 - rho) quantile of token entropy over the batch."""
    tau: NonNegative | None = None
    """A fixed entropy threshold in nats; null uses the batch quantile."""
    chunk_size: Count = 256
    """Tokens per chunk in the entropy/log-prob computation (bounds peak memory)."""
    cmi: CMIConfig = field(default_factory=CMIConfig)
    """The Monte-Carlo CMI probe."""


@dataclass(frozen=True)
class TrainConfig(SamplingConfig):
    """Online RLVR, shared by every variant. Sampling keys (group_size, temperature, ...) are the rollouts'."""

    steps: Count = 10
    """Optimizer steps; each samples a fresh batch from the current policy."""
    prompts_per_step: Count = 4
    """Prompts sampled per step (each gets group_size responses)."""
    lr: Positive = 4.0e-5
    """4e-5 moves a 135M model within 10 steps of 16 samples on CPU; the paper-scale 1e-6 does not."""
    weight_decay: NonNegative = 0.0
    """AdamW weight decay."""
    warmup_steps: NonNegInt = 0
    """Linear learning-rate warmup, in optimizer steps."""
    ppo_epochs: Count = 1
    """Passes over each step's batch."""
    minibatches: Count = 1
    """Optimizer updates per epoch: the batch's sequences are split into this many minibatches."""
    micro_batch_size: Count = 4
    """Sequences per forward/backward; gradients are accumulated up to a minibatch. Peak memory grows with it (the
    activations backward keeps, ~0.16 GiB per sequence of 160 tokens of SmolLM2): one update of 32 x 160 tokens
    peaks at 3.38 GiB with 4 and 3.81 GiB with 8 under tcmalloc (3.75 and 4.17 GiB under glibc's malloc), and 4
    takes ~8% longer (benchmarks/bench_memory.py). Changing it changes the order of the gradient sum, so the weights
    differ in their last bits."""
    clip_low: Annotated[float, Range(0, 1, hi_open=True)] = 0.2
    """PPO ratio clip below: the ratio is kept >= 1 - clip_low, in [0, 1)."""
    clip_high: NonNegative = 0.28
    """DAPO clip-higher: the upper clip is looser than the lower."""
    agg: AggregationName = "token_mean"
    """Loss aggregation by name (`eapo.core.losses`): `token_mean`, `seq_mean_token_mean`, `seq_mean_token_sum_norm`."""
    advantage: AdvantageName = "grpo"
    """Advantage estimator by name (`eapo.core.advantages`)."""
    rho: Share = 0.2
    """Quadrant threshold (top rho of entropy per batch) for per-step statistics and the top_entropy weighting."""
    kl_coef: NonNegative = 0.0
    """KL to the frozen reference policy (k3 estimator); 0 = off and no reference model is kept."""
    max_grad_norm: Positive = 1.0
    """Gradient clipping by global norm."""
    max_update_ratio: Positive | None = 1.0
    """Divergence guard: stop (TrainingDiverged, naming the step; the last good checkpoint is kept) when one optimizer
    update moves the weights by more than this times their norm, ‖Δθ‖/‖θ‖ over all trainable parameters. Healthy
    runs stay far below (about 1e-3 per update at lr 4e-5); lr 1e6 gives about 1e7 while the loss stays finite.
    null = no bound (and no copy of the weights is kept for it). Non-finite weights always stop the run."""
    checkpoint_every: Count = 5
    """Save model, optimizer, scheduler and RNG state every N steps, for resuming a killed run. The train stage
    writes none after its last step: it deletes its checkpoints once the model is committed."""
    chunk_size: Count = 256
    """Tokens per chunk in the log-prob/entropy computation (bounds peak memory)."""
    seed: Seed = 0
    """Seed of sampling, prompt order and initialisation."""
    reuse_rollouts: bool = True
    """Step 0 samples from the unchanged base policy, so it reuses the rollout stage's samples of its prompts when
    they cover every step-0 prompt with at least `group_size` samples and `group_size`, `temperature`, `top_p` and
    `max_new_tokens` equal the rollout stage's (with params.yaml's values they do: `rollout.seed` = `seed` makes the
    rollout stage roll out step 0's prompts); the train stage's lineage then names the rollouts as an input."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Passed to accelerate. `no` on CPU."""
    skip_zero_advantage: bool = True
    """Leave responses whose Â is 0 at every token (GRPO: each response of a group whose rewards are all equal) out
    of the update's forward/backward. Under the clipped surrogate without a KL term such a response adds exactly 0
    to the loss and to the gradient, so the update is the same up to float summation order (the weights differ in
    their last bits) and costs only the responses that carry a signal; `approx_kl` is then the mean over the
    responses run. Not applied where a response with Â = 0 still counts: kl_coef > 0, a policy loss that is not
    inert at Â = 0 (entropy_bonus, clip_cov, kl_cov), or several processes. false = run every response."""

    def validate(self, key: str) -> None:
        if self.group_size < 2:
            raise ConfigError(f"{key}.group_size must be >= 2 (GRPO needs a group), got {self.group_size}")
        batch = self.prompts_per_step * self.group_size
        if batch % self.minibatches:
            raise ConfigError(f"{key}.minibatches ({self.minibatches}) must divide the batch "
                              f"prompts_per_step*group_size = {batch}")


@dataclass(frozen=True)
class VariantConfig:
    """One training variant: a token weighting and a policy loss, each by registry name, and their parameters."""

    weighting: WeightingName
    """`none`, `top_entropy`, `drop_quadrant`, `keep_quadrant`, `eapo` (see `eapo.core.weighting`)."""
    rho: float | None = None
    """top_entropy: the high-entropy share kept (the weighting checks its range)."""
    quadrant: str | None = None
    """drop_quadrant / keep_quadrant: `pos_high`, `pos_low`, `neg_high` or `neg_low`."""
    alpha: float | None = None
    """EAPO: reallocation strength in [0, 1]; 0 is GRPO."""
    alpha_neg: float | None = None
    """EAPO: a separate alpha for negative-advantage responses; null uses alpha."""
    phi: float | None = None
    """EAPO: the entropy floor (nats) below which a token's capacity is 0."""
    policy_loss: PolicyLossName = "ppo_clip"
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
    """What the DVC train / evaluate matrices and the report cover."""

    variants: list[str] = field(default_factory=lambda: ["grpo", "top20", "eapo", "drop_pos_high", "drop_pos_low",
                                                         "drop_neg_high", "drop_neg_low"])
    """The variants trained, evaluated and reported: the DVC matrix. Each must be a key of `variants`."""
    seeds: list[Seed] = field(default_factory=lambda: [0])
    """Training replicates: `train` and `evaluate` are DVC matrices over variant x seed, and the report's intervals
    resample seeds, then prompts within each seed. Replicate `s` trains with seed `train.seed + s` (sampling,
    prompt order, minibatch order, dropout), so the default `[0]` is exactly `train.seed`, and `train.seed` (which
    `python -m flows.pipeline --seed N` sets) shifts every replicate. Outputs go to `<train_dir>/<variant>/seed<s>/`,
    `<evaluate_dir>/<variant>/seed<s>/` and `<metrics_dir>/<variant>/seed<s>.json`. Adding a seed adds stages only."""

    def validate(self, key: str) -> None:
        if not self.seeds:
            raise ConfigError(f"{key}.seeds must list at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"{key}.seeds has duplicates: {self.seeds}")


@dataclass(frozen=True)
class BenchmarkConfig:
    """One extra evaluation set, read from a file the user gives."""

    name: str
    """The dataset's name in the metrics (`metrics/<model>.json` is nested by it)."""
    kind: Annotated[str, Registered("eapo.data.importers", "IMPORTERS")]
    """A `prepare.sources` kind: `gsm8k`, `math500`, `aime24`, `amc23`, `jsonl`, `parquet`, `csv`."""
    path: str
    """The file to read."""
    limit: Count | None = None
    """Keep at most this many rows (first rows)."""
    fields: dict[FieldName, str] | None = None
    """Generic kinds: our field -> the file's column."""


@dataclass(frozen=True)
class EvaluateConfig(SamplingConfig):
    """Stage `evaluate@<model>`: accuracy of the base policy and of each trained variant."""

    num_prompts: Count | None = 50
    """Test prompts evaluated (first N in id order); null = all."""
    k: Count = 4
    """Samples per prompt n for avg@n and pass@k (group_size is ignored here)."""
    pass_k: list[Count] = field(default_factory=lambda: [1, 4])
    """k values of the unbiased pass@k (each <= `k`, the samples per prompt). The largest one is the report's
    "large-k" pass@k: flat greedy and large-k pass@k while avg@k rises reads as sharpening."""
    greedy: bool = True
    """Also decode greedily once per prompt for greedy accuracy."""
    batch_size: Count = 256
    """Sequences decoded together: the default's 200 sampled rows (50 prompts × k 4) as one batch, which decodes
    ~1.4x faster than four batches of 64 on 2 CPU cores (the matmuls run at a larger M); its KV cache is ~0.7 GB at
    32 new tokens. Each batch draws from its own seeded generator, so the samples depend on it."""
    seed: Seed = 1234
    """Sampling seed."""
    benchmarks: list[BenchmarkConfig] = field(default_factory=list)
    """Extra evaluation sets (e.g. GSM8K test) read from files the user gives."""


    def validate(self, key: str) -> None:
        if not self.pass_k or any(k > self.k for k in self.pass_k):
            raise ConfigError(f"{key}.pass_k must be non-empty with each <= {key}.k ({self.k}) "
                              f"(pass@k needs n >= k samples per prompt), got {self.pass_k}")


@dataclass(frozen=True)
class ReportConfig:
    """Stage `report`: the ablation table, the per-seed table and the claims, with bootstrap intervals."""

    bootstrap: Count = 2000
    """Bootstrap resamples per interval (hierarchical: seeds, then prompts within each seed)."""
    ci: Probability = 0.95
    """Interval coverage, in (0, 1); the claims' family-wise error rate (Holm) is 1 - ci."""
    seed: Seed = 0
    """Seed of the bootstrap resampling (the same for every interval, so reruns give identical reports)."""
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


class ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader, plus YAML 1.2 floats without a dot or with an unsigned exponent (`1e-06`, `1E-6`,
    `1.0e6`), which YAML 1.1 reads as strings but DVC (`dvc exp run -S train.lr=1e-6`) and other writers produce."""


_EXP_FLOAT = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)[eE][-+]?[0-9]+$")
ParamsLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXP_FLOAT, list("-+.0123456789"))


def parse_yaml(text: str) -> Any:
    """Parse params YAML (a file or one `-S` value) with `ParamsLoader`."""
    return yaml.load(text, Loader=ParamsLoader)  # noqa: S506 (a SafeLoader subclass)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Annotated:
        out = _coerce(value, args[0], key)
        for check in args[1:]:
            check.check(out, key)
        return out
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
        return {_coerce(k, args[0], f"{key}.{k}"): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, str) and _EXP_FLOAT.match(value.strip()):
            value = float(value.replace("_", ""))  # `1e-06` from a plain YAML 1.1 reader (yaml.safe_load)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
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
    hints = typing.get_type_hints(cls, include_extras=True)
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
        if name in sections["study"].variants[:i]:
            raise ConfigError(f"study.variants[{i}]: variant {name!r} is listed twice")
        if name not in variants:
            raise ConfigError(f"study.variants[{i}]: unknown variant {name!r} (defined: {', '.join(variants)})")
    return Params(**sections, variants=variants, raw=raw)


def load_params(path: str | Path = "params.yaml", overrides: dict[str, Any] | None = None) -> Params:
    """Read and validate a params file; `overrides` maps dotted keys to values (like `dvc exp run -S`)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"params file not found: {path}")
    try:
        raw = parse_yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    try:
        for dotted, value in (overrides or {}).items():
            set_dotted(raw, dotted, value)
        return params_from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `raw[a][b][c] = value` for `dotted` = "a.b.c", creating missing mappings; ConfigError (naming the key)
    when a part is empty or an intermediate key holds a value that is not a mapping."""
    if not isinstance(raw, dict):
        raise ConfigError("params file must be a mapping of sections")
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(f"bad key {dotted!r}: empty part in a dotted key")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            prefix = ".".join(parts[: i + 1])
            raise ConfigError(f"bad key {dotted!r}: {prefix} is {child!r}, not a mapping with keys")
        node = child
    node[parts[-1]] = value


def params_hash(subset: dict[str, Any]) -> str:
    """A stable hash of a params subset (canonical JSON)."""
    blob = json.dumps(subset, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
