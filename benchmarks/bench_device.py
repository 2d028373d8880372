"""The model stages' work on an accelerator: the sampler and a few training steps on a torch device (CUDA by default),
each checked against the same computation on the CPU, with the figures a reader needs before trusting a GPU run.

Nothing in CI has a GPU, and the pipeline's determinism contract is stated for the CPU; this benchmark is how a GPU
run is checked by hand (README "GPU"). Four parts, each a table; everything also goes to
``benchmarks/results/bench_device.json``:

1. **sampler**: ``sample(backend="fast")`` vs ``backend="generate"`` tokens/s at several batch sizes, interleaved
   reps, fixed-length decodes (eos set to a token never drawn), on the device; the log-prob and entropy each backend
   records against a plain teacher-forced forward on the same device (``teacher_forced_logprobs``), max |diff|.
2. **CPU agreement**: one update's log π, loss and parameter gradient (``accumulate_gradients``, micro-batches,
   prefix sharing, ``eapo.saved_activations``), on the device and on a CPU copy of the same weights, for the same
   rollouts: max |Δ log π| and ‖g_device − g_cpu‖ / ‖g_cpu‖.
3. **training**: ``eapo.trainer.train`` for ``--steps`` steps (4 prompts × G 4, eapo weighting, a synthetic reward a
   random-init model can earn), five runs from the same weights and seed, each in its own process as a stage runs:
   ``model.deterministic`` twice, without it once, and twice under ``mixed_precision="bf16"``. Seconds per step (the
   first excluded), peak device memory, what determinism costs, and whether two runs of a seed write the same
   ``model.safetensors``, byte for byte.
4. **memory**: one update of 32 × 160 tokens plus the AdamW step (issue 14's memory case): the device's peak
   allocated memory against the floor of fp32 weights + gradients + AdamW's two moments.

    python benchmarks/bench_device.py                      # cuda, SmolLM2 (the GGUF), ~2 min on an H200
    python benchmarks/bench_device.py --export-config DIR  # here: SmolLM2's config + tokenizer, no weights
    python benchmarks/bench_device.py --random-init DIR    # there: that architecture, seeded random weights
    python benchmarks/bench_device.py --device cpu --model tiny-random-llama --reps 1   # the smoke test

``--random-init`` is for a machine without the model's weights (a lent GPU machine reaches no hub, and the GGUF is
larger than what travels there): the same shapes, tokenizer and chat template, so every figure but the rewards of a
real policy is the one SmolLM2 would give. Its weights are saved to a temporary model directory and loaded through
``load_policy`` like any local model.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

NAME = "bench_device"
BACKENDS = ("fast", "generate")
#: What ``--export-config`` copies: everything a model directory has but its weights.
CONFIG_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                "chat_template.jinja", "special_tokens_map.json")


# ----------------------------------------------------------------------------------------------------------------------
# the model


def export_config(name: str, out: Path) -> Path:
    """Write ``name``'s config and tokenizer (no weights) to ``out``, for ``--random-init`` elsewhere."""
    policy = C.load(name)
    out.mkdir(parents=True, exist_ok=True)
    policy.model.config.save_pretrained(out)
    policy.tokenizer.save_pretrained(out)
    return out


def random_init_dir(config_dir: Path, seed: int, dest: Path) -> Path:
    """A model directory in ``dest``: ``config_dir``'s architecture with weights drawn by ``from_config`` under
    ``seed`` (fp32, as the pipeline trains), and its tokenizer files."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(config_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(dest)
    for f in CONFIG_FILES:
        if (config_dir / f).is_file() and not (dest / f).is_file():
            shutil.copy(config_dir / f, dest / f)
    return dest


def load_on(name: str, device: str, deterministic: bool = True):
    from eapo.policy import load_policy

    return load_policy(name, device=device, cache_dir=C.MODEL_CACHE, deterministic=deterministic)


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_reset(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device) -> float | None:
    """Peak memory allocated by torch on ``device`` since the last reset (None off CUDA: see bench_memory for RSS)."""
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


# ----------------------------------------------------------------------------------------------------------------------
# 1. sampler


def part_sampler(policy, batches: list[int], tokens: int, reps: int, group: int) -> dict:
    from bench_sampling import make_prompts

    from eapo.sampler import sample, teacher_forced_logprobs

    model, tok = policy.model, policy.tokenizer
    device = model.device
    never = [model.config.vocab_size - 1]  # eos no row draws (p ~ 1/V per token): every row decodes `tokens`

    def run(backend, prompts, batch, seed, max_new=tokens):
        return sample(model, tok, prompts, n=group, temperature=1.0, top_p=1.0, max_new_tokens=max_new, seed=seed,
                      batch_size=batch, backend=backend, eos_token_ids=never)

    rows, per_batch = [], {}
    for batch in batches:
        prompts = make_prompts(tok, max(batch // group, 1))
        for b in BACKENDS:  # warm-up: kernels, allocator pools, lazy imports
            run(b, prompts, batch, seed=10_000, max_new=4)
        per = {b: [] for b in BACKENDS}
        last = {}
        for rep in range(reps):
            for b in (BACKENDS if rep % 2 == 0 else BACKENDS[::-1]):
                sync(device)
                s = run(b, prompts, batch, seed=rep)
                per[b].append(s.stats["tokens_per_s"])
                last[b] = s
        # Each backend's records against one plain forward over prompt + response, on the same device.
        diffs = {}
        for b, s in last.items():
            d_lp = d_h = 0.0
            for smp in s[:4]:
                lp, h = teacher_forced_logprobs(model, smp.prompt_ids, smp.response_ids)
                d_lp = max(d_lp, max(abs(x - y) for x, y in zip(lp, smp.logprobs)))
                d_h = max(d_h, max(abs(x - y) for x, y in zip(h, smp.entropies)))
            diffs[b] = {"logp": d_lp, "entropy": d_h}
        st = {b: C.summarize(per[b]) for b in BACKENDS}
        ratio = st["fast"]["median"] / st["generate"]["median"]
        per_batch[batch] = {"tok_s": per, "stats": st, "ratio": ratio, "teacher_forcing_max_abs_diff": diffs}
        for b in BACKENDS:
            rows.append({"batch": batch, "backend": b, "tok/s": C.fmt_stat(st[b]),
                         "ratio fast/generate": ratio if b == "fast" else None,
                         "max |Δ logp| vs forward": diffs[b]["logp"], "max |Δ H| vs forward": diffs[b]["entropy"]})
    return {"rows": rows, "per_batch": per_batch, "tokens": tokens, "group": group}


# ----------------------------------------------------------------------------------------------------------------------
# 2. CPU agreement


def _gradients(model) -> list:
    return [p.grad.detach().to("cpu", copy=True) if p.grad is not None else None for p in model.parameters()]


def _one_update(model, rollouts, cfg, pad_id):
    """log π of the rollouts (no grad) and one accumulated gradient; the model's .grad is left cleared."""
    import torch

    from eapo.forward import grouped_logprobs
    from eapo.trainer import accumulate_gradients, loss_denominator

    with torch.no_grad():
        logp, ent = grouped_logprobs(model, [r.prompt_ids for r in rollouts], [r.response_ids for r in rollouts],
                                     pad_id)
    model.zero_grad(set_to_none=True)
    stats = accumulate_gradients(model, rollouts, cfg, denom=loss_denominator(rollouts, cfg.agg), pad_id=pad_id)
    grads = _gradients(model)
    model.zero_grad(set_to_none=True)
    return logp.cpu(), ent.cpu(), stats["loss"], grads


def part_agreement(policy, prompts_n: int, group: int, tokens: int) -> dict:
    import torch
    from bench_sampling import make_prompts

    from eapo import saved_activations
    from eapo.config import TrainConfig
    from eapo.forward import Rollout
    from eapo.sampler import sample

    model, tok = policy.model, policy.tokenizer
    device = model.device
    pad_id = tok.pad_token_id
    prompts = make_prompts(tok, prompts_n)
    samples = sample(model, tok, prompts, n=group, temperature=1.0, top_p=1.0, max_new_tokens=tokens, seed=7,
                     batch_size=prompts_n * group)
    # Advantages of both signs within each group, so that every quadrant's gradient is in the sum.
    rollouts = [Rollout(list(s.prompt_ids), list(s.response_ids), list(s.logprobs),
                        [1.0 if s.sample_idx % 2 == 0 else -1.0] * len(s.response_ids)) for s in samples]
    cfg = TrainConfig()
    cpu_model = copy.deepcopy(model).to("cpu")
    out = {}
    for label, m in (("device", model), ("cpu", cpu_model)):
        saved_activations.apply(m)  # as eapo.trainer.train does
        m.train()
        t0 = time.perf_counter()
        out[label] = _one_update(m, rollouts, cfg, pad_id)
        sync(device)
        out[label + "_seconds"] = time.perf_counter() - t0
        m.eval()
    (lp_d, h_d, loss_d, g_d), (lp_c, h_c, loss_c, g_c) = out["device"], out["cpu"]
    num = sum(float((a - b).double().pow(2).sum()) for a, b in zip(g_d, g_c) if a is not None)
    den = sum(float(b.double().pow(2).sum()) for b in g_c if b is not None)
    res = {"rollouts": len(rollouts), "tokens": sum(len(r.response_ids) for r in rollouts),
           "max_abs_diff_logp": float((lp_d - lp_c).abs().max()),
           "max_abs_diff_entropy": float((h_d - h_c).abs().max()),
           "loss_device": loss_d, "loss_cpu": loss_c, "grad_rel_diff": (num / max(den, 1e-300)) ** 0.5,
           "grad_norm_cpu": den ** 0.5, "seconds_device": out["device_seconds"], "seconds_cpu": out["cpu_seconds"],
           "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32)}
    del cpu_model
    return res


# ----------------------------------------------------------------------------------------------------------------------
# 3. training


def parity_reward(texts: list[str], golds: list[str]) -> list[float]:
    """1 for a response of an even number of characters: a reward any policy, random weights included, earns about
    half the time, so groups are mixed and every step has a gradient."""
    return [1.0 if len(t) % 2 == 0 else 0.0 for t in texts]


def train_child(argv: list[str]) -> None:
    """One training run in its own process, as a train stage runs: the kernel flags and cuBLAS's workspace are
    process-wide, fixed at the first CUDA kernel, so a run with other flags needs a fresh process."""
    name, device, steps, tokens, mixed_precision, deterministic, threads, out = argv
    C.set_threads(int(threads))
    from eapo.config import ModelConfig, RewardConfig, TrainConfig, VariantConfig
    from eapo.data import generate
    from eapo.trainer import train

    policy = load_on(name, device, deterministic == "1")
    dev = policy.model.device
    prompts = [{"id": r.id, "prompt": r.prompt, "answer": r.answer}
               for r in generate(16, families=["add"], levels={"add": [1, 2]}, seed=0)]
    cfg = TrainConfig(steps=int(steps), prompts_per_step=4, group_size=4, max_new_tokens=int(tokens),
                      checkpoint_every=10**6, reuse_rollouts=False, seed=0, mixed_precision=mixed_precision)
    rows: list[dict] = []
    peak_memory_reset(dev)
    result = train(policy, prompts, cfg, "eapo", VariantConfig(weighting="eapo", alpha=0.5, phi=0.3), ModelConfig(),
                   RewardConfig(), Path(out), on_step=rows.append, reward_fn=parity_reward)
    sync(dev)
    C.emit_child_result({"rows": rows, "peak_gib": peak_memory_gib(dev), "model_dir": str(result.model_dir)})


def part_training(name: str, device: str, steps: int, tokens: int, threads: int, tmp: Path) -> dict:
    """Five runs, each a fresh process: with ``model.deterministic`` (the default), without it (what determinism
    costs), with it again (is the written model the same, byte for byte?), and twice under bf16 autocast (the same
    question where attention runs in bf16 kernels)."""
    import torch
    from safetensors.torch import load_file

    plan = {"fp32 #1, deterministic": ("no", "1"), "fp32, not deterministic": ("no", "0"),
            "fp32 #2, deterministic": ("no", "1"), "bf16 autocast #1, deterministic": ("bf16", "1"),
            "bf16 autocast #2, deterministic": ("bf16", "1")}
    runs = {}
    for k, (label, (mp, det)) in enumerate(plan.items()):
        runs[label] = C.run_child(Path(__file__).resolve(), ["--child-train", name, device, str(steps), str(tokens),
                                                             mp, det, str(threads), str(tmp / f"train-{k}")])
    a, fast, b, h1, h2 = runs.values()

    def weights(run) -> Path:
        return Path(run["model_dir"]) / "model.safetensors"

    def comparable(run):
        return [{k: v for k, v in r.items() if k not in ("seconds", "tokens_per_s")} for r in run["rows"]]

    def replay(x, y) -> dict:
        """Did two runs of the same seed write the same model, byte for byte, and the same step rows?"""
        tx, ty = load_file(weights(x)), load_file(weights(y))
        return {"same_model_bytes": weights(x).read_bytes() == weights(y).read_bytes(),
                "same_step_rows": comparable(x) == comparable(y),
                "max_abs_weight_diff": max(float((tx[k].float() - ty[k].float()).abs().max()) for k in tx)}

    def step_seconds(run):
        return C.after_warmup([r["seconds"] for r in run["rows"]])

    finite = {label: all(bool(torch.isfinite(v).all()) for v in load_file(weights(r)).values())
              for label, r in runs.items()}
    rows = [{"run": label, "s/step": C.fmt_stat(C.summarize(step_seconds(r))), "first step s": r["rows"][0]["seconds"],
             "peak device GiB": r["peak_gib"], "grad norm (first)": r["rows"][0]["grad_norm"],
             "reward (mean)": sum(x["reward_mean"] for x in r["rows"]) / len(r["rows"]),
             "finite weights": finite[label]}
            for label, r in runs.items()]
    cost = C.summarize(step_seconds(a) + step_seconds(b))["median"] / C.summarize(step_seconds(fast))["median"]
    return {"rows": rows, "steps": steps, "fp32": replay(a, b), "bf16": replay(h1, h2), "deterministic_cost": cost,
            "step_rows": {label: r["rows"] for label, r in runs.items()}}


# ----------------------------------------------------------------------------------------------------------------------
# 4. memory


def part_memory(policy, prompts: int, group: int, prompt_tokens: int, response_tokens: int) -> dict:
    import torch
    from bench_memory import make_rollouts

    from eapo import saved_activations
    from eapo.config import TrainConfig
    from eapo.trainer import accumulate_gradients, loss_denominator

    model = policy.model
    device = model.device
    saved_activations.apply(model)
    model.train()
    cfg = TrainConfig()
    rollouts = make_rollouts(model.config.vocab_size, prompts, group, prompt_tokens, response_tokens)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def update() -> float:
        t0 = time.perf_counter()
        accumulate_gradients(model, rollouts, cfg, denom=loss_denominator(rollouts, cfg.agg),
                             pad_id=policy.tokenizer.pad_token_id)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        return time.perf_counter() - t0

    update()  # warm-up: Adam's moments exist from here on, as in every step after the first
    peak_memory_reset(device)
    seconds = update()
    n_params = sum(p.numel() for p in model.parameters())
    model.eval()
    return {"batch": f"{prompts * group} x {prompt_tokens + response_tokens}", "micro_batch_size": cfg.micro_batch_size,
            "peak_gib": peak_memory_gib(device), "floor_gib": 16 * n_params / 2**30, "seconds": seconds}


# ----------------------------------------------------------------------------------------------------------------------


def device_info(device) -> dict:
    import torch
    import transformers

    info = {"device": str(device), "torch": torch.__version__, "transformers": transformers.__version__}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, capability=f"{props.major}.{props.minor}",
                    memory_gib=props.total_memory / 2**30, cuda=torch.version.cuda)
    return info


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(p, reps=3)
    p.add_argument("--device", default="cuda", help="torch device (default cuda)")
    p.add_argument("--random-init", type=Path, default=None, metavar="DIR",
                   help="use DIR's architecture and tokenizer (config.json etc., no weights) with seeded random "
                        "weights instead of --model")
    p.add_argument("--export-config", type=Path, default=None, metavar="DIR",
                   help="write --model's config and tokenizer to DIR (for --random-init elsewhere) and stop")
    p.add_argument("--batches", default="16,32,64", help="sampler batch sizes (default 16,32,64)")
    p.add_argument("--tokens", type=int, default=32, help="max new tokens, sampler and training (default 32)")
    p.add_argument("--group", type=int, default=4, help="samples per prompt (default 4)")
    p.add_argument("--steps", type=int, default=4, help="training steps per run (default 4; the first is a warm-up)")
    p.add_argument("--memory-size", default="8x4x60x100",
                   help="prompts x group x prompt tokens x response tokens of the memory update (default 32 x 160)")
    p.add_argument("--parts", default="sampler,agreement,training,memory", help="which parts to run")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--child-train":
        train_child(argv[1:])
        return {}
    args = p.parse_args(argv)
    name = (args.model or [C.SMOLLM2])[0]
    C.set_threads(args.threads)
    if args.export_config is not None:
        out = export_config(name, args.export_config)
        print(f"{name}'s config and tokenizer: {out}")
        return {"exported": str(out)}


    from eapo.policy import resolve_device

    try:
        device = resolve_device(args.device)
    except ValueError as e:
        raise SystemExit(f"{NAME}: {e}") from None
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    result: dict = {"config": {k: str(v) for k, v in vars(args).items()}, "info": device_info(device)}
    with tempfile.TemporaryDirectory(prefix="bench-device-model-") as tmp:
        if args.random_init is not None:
            name = str(random_init_dir(args.random_init, seed=0, dest=Path(tmp) / "model"))
            result["model"] = f"random-init({args.random_init})"
        else:
            result["model"] = name
        policy = load_on(name, str(device))
        result["info"]["n_params"] = policy.info["n_params"]
        t_all = time.perf_counter()
        if "sampler" in parts:
            result["sampler"] = part_sampler(policy, [int(b) for b in args.batches.split(",")], args.tokens,
                                             args.reps, args.group)
        if "agreement" in parts:
            result["agreement"] = part_agreement(policy, 4, args.group, args.tokens)
        if "memory" in parts:
            P, G, Lp, Lr = (int(x) for x in args.memory_size.split("x"))
            result["memory"] = part_memory(policy, P, G, Lp, Lr)
        del policy
        if "training" in parts:
            result["training"] = part_training(name, str(device), args.steps, args.tokens, args.threads, Path(tmp))
        result["seconds"] = time.perf_counter() - t_all
    tables = []
    if "sampler" in result:
        tables.append(f"### sampler on {device} (fixed length {args.tokens} tokens, G {args.group}, "
                      f"{args.reps} interleaved reps)\n\n" + C.markdown_table(result["sampler"]["rows"]))
    if "agreement" in result:
        a = result["agreement"]
        tables.append(f"### {device} vs cpu, one update of {a['rollouts']} rollouts ({a['tokens']} response tokens)"
                      "\n\n" + C.markdown_table([{k: v for k, v in a.items()}]))
    if "training" in result:
        t = result["training"]
        tables.append(f"### training on {device}, {t['steps']} steps x 16 responses (eapo weighting, parity reward)"
                      "\n\n" + C.markdown_table(t["rows"]) + f"\n\ndeterministic / not: {t['deterministic_cost']:.2f}x "
                      "per step. The same seed twice, deterministic:\n\n"
                      + C.markdown_table([{"precision": p, **t[p]} for p in ("fp32", "bf16")]))
    if "memory" in result:
        tables.append(f"### one update on {device}\n\n" + C.markdown_table([result["memory"]]))
    result["table"] = "\n\n".join(tables)
    path = C.write_results(NAME, {k: v for k, v in result.items()}, args.results_dir)
    if not args.quiet:
        print(f"## {NAME}: {result['model']} on {json.dumps(result['info'])}\n")
        print(result["table"])
        print(f"\nresults: {path}")
    return result


if __name__ == "__main__":
    main()
