"""One full online RL step (rollout + reward + update): ``eapo.trainer.train`` vs TRL's ``GRPOTrainer``, side by side
on an identical config (DESIGN §8 anchor): SmolLM2-135M fp32 on CPU, 4 prompts x G=4 = 16 completions per step,
max 64 new tokens, T=1.0, top_p=1.0, lr 1e-6, beta (KL) 0, the same 4 synthetic 1-digit-addition prompts (the same
chat-templated token ids), the same reward (``eapo.reward.RewardScorer``, last-number fallback).

Each run is its own child process (fresh model, no shared state between the two trainers); runs are interleaved
(ours, TRL, TRL, ours, ...). A run trains ``--steps`` steps; the first step of each run is a warm-up and is excluded
from the timed figure when ``--steps`` >= 2 (both first-step and later-step times are reported). The step time of
ours is the trainer's own per-step ``seconds`` (sampling + reward + update, without the checkpoint write); TRL's is
wall time between the HF ``on_step_begin`` and ``on_step_end`` callbacks (generation + reward + update). Step time
depends on how long the sampled completions are, so the mean completion length of each side is reported too.
Target (DESIGN §7): ours <= 0.7x TRL's wall time per step.

TRL's own defaults are kept where the anchor config does not say otherwise, notably ``gradient_checkpointing=True``
(GRPOConfig's default); ``--trl-no-grad-ckpt`` turns it off. Needs ``trl`` (the ``bench`` extra).

    .venv/bin/python benchmarks/bench_train_step.py                  # 2 reps x 2 steps per side, ~6-8 min loaded
    .venv/bin/python benchmarks/bench_train_step.py --reps 3 --steps 3
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

NAME = "bench_train_step"
SIDES = ("ours", "trl")


def bench_prompts(n: int) -> list[dict]:
    from eapo.data import generate

    return [{"id": r.id, "prompt": r.prompt, "answer": r.answer}
            for r in generate(n, families=["add"], levels={"add": [1]}, seed=0)[:n]]


def run_ours(name: str, steps: int, P: int, G: int, tokens: int, lr: float) -> dict:
    from eapo.config import ModelConfig, RewardConfig, TrainConfig, VariantConfig
    from eapo.trainer import train

    policy = C.load(name)
    prompts = bench_prompts(P)
    cfg = TrainConfig(steps=steps, prompts_per_step=P, group_size=G, max_new_tokens=tokens, lr=lr, kl_coef=0.0,
                      temperature=1.0, top_p=1.0, batch_size=P * G, checkpoint_every=10**6, reuse_rollouts=False,
                      seed=0)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-train-ours-") as out:
        t0 = time.perf_counter()
        train(policy, prompts, cfg, "grpo", VariantConfig(weighting="none"), ModelConfig(), RewardConfig(),
              Path(out), on_step=rows.append)
        total = time.perf_counter() - t0
    return {"step_seconds": [r["seconds"] for r in rows], "mean_length": [r["response_length"] for r in rows],
            "reward_mean": [r["reward_mean"] for r in rows], "total_seconds": total,
            "config": {"micro_batch_size": cfg.micro_batch_size, "chunk_size": cfg.chunk_size, "backend": cfg.backend}}


def run_trl(name: str, steps: int, P: int, G: int, tokens: int, lr: float, grad_ckpt: bool) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from eapo.config import ModelConfig, RewardConfig
    from eapo.reward import RewardScorer

    policy = C.load(name)
    instruction = ModelConfig().instruction
    prompts = bench_prompts(P)
    # Conversational prompts: TRL applies the chat template, giving the ids build_prompt_ids gives ours.
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": f"{p['prompt'].rstrip()} {instruction}"}],
                             "answer": str(p["answer"])} for p in prompts])
    rc = RewardConfig()
    scorer = RewardScorer(timeout_s=rc.timeout_s, workers=rc.workers, fallback=rc.fallback)

    def eapo_reward(prompts, completions, answer, **kwargs):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [r.reward for r in scorer.score(texts, [str(a) for a in answer])]

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.logs, self.t0 = [], [], None

        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.t0)

        def on_log(self, args, state, control, logs=None, **kw):
            self.logs.append(dict(logs or {}))

    timer = StepTimer()
    with tempfile.TemporaryDirectory(prefix="bench-train-trl-") as out, scorer:
        args = GRPOConfig(output_dir=out, per_device_train_batch_size=P * G, num_generations=G,
                          max_completion_length=tokens, learning_rate=lr, beta=0.0, max_steps=steps, use_cpu=True,
                          bf16=False, fp16=False, report_to=[], logging_steps=1, save_strategy="no",
                          temperature=1.0, top_p=1.0, gradient_checkpointing=grad_ckpt, disable_tqdm=True, seed=0)
        trainer = GRPOTrainer(model=policy.model, reward_funcs=[eapo_reward], args=args, train_dataset=ds,
                              processing_class=policy.tokenizer, callbacks=[timer])
        t0 = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - t0
    lens = [lg["completions/mean_length"] for lg in timer.logs if "completions/mean_length" in lg]
    rew = [lg["reward"] for lg in timer.logs if "reward" in lg]
    return {"step_seconds": timer.times, "mean_length": lens, "reward_mean": rew, "total_seconds": total,
            "config": {"gradient_checkpointing": grad_ckpt, "per_device_train_batch_size": P * G,
                       "num_generations": G, "loss_type": args.loss_type}}


def child(argv: list[str]) -> None:
    side, name, steps, P, G, tokens, lr, threads, grad_ckpt = argv
    C.set_threads(int(threads))
    kw = {"name": name, "steps": int(steps), "P": int(P), "G": int(G), "tokens": int(tokens), "lr": float(lr)}
    out = run_ours(**kw) if side == "ours" else run_trl(**kw, grad_ckpt=grad_ckpt == "1")
    out.update(side=side, peak_rss_bytes=C.maxrss_bytes())
    C.emit_child_result(out)


def trl_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("trl") is not None


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--child":
        child(argv[1:])
        return {}
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(p, reps=2)
    p.add_argument("--steps", type=int, default=2, help="steps per run; the first is a warm-up if >= 2 (default 2)")
    p.add_argument("--prompts", type=int, default=4, help="prompts per step (default 4)")
    p.add_argument("--group", type=int, default=4, help="G, completions per prompt (default 4)")
    p.add_argument("--tokens", type=int, default=64, help="max completion length (default 64)")
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--trl-no-grad-ckpt", action="store_true", help="TRL without gradient checkpointing")
    args = p.parse_args(argv)
    if not trl_available():
        raise SystemExit("trl is not installed: `.venv/bin/uv pip install --python .venv/bin/python "
                         "--find-links /opt/wheels trl==1.16.0` (the `bench` extra)")
    name = (args.model or [C.SMOLLM2])[0]
    script = Path(__file__).resolve()
    runs = {s: [] for s in SIDES}
    for rep in range(args.reps):
        for side in (SIDES if rep % 2 == 0 else SIDES[::-1]):
            r = C.run_child(script, ["--child", side, name, str(args.steps), str(args.prompts), str(args.group),
                                     str(args.tokens), str(args.lr), str(args.threads),
                                     "0" if args.trl_no_grad_ckpt else "1"], timeout=3600)
            runs[side].append(r)

    def timed(r):  # steps after the warm-up when there is one
        return C.after_warmup(r["step_seconds"])

    rows, st = [], {}
    for side in SIDES:
        t = [x for r in runs[side] for x in timed(r)]
        first = [r["step_seconds"][0] for r in runs[side]]
        lens = [x for r in runs[side] for x in C.after_warmup(r["mean_length"])]
        st[side] = {"timed": C.summarize(t), "first": C.summarize(first), "len": C.summarize(lens)}
        rows.append({"trainer": "eapo.trainer.train" if side == "ours" else "trl GRPOTrainer 1.16",
                     "s/step (median [min-max])": C.fmt_stat(st[side]["timed"]),
                     "first step s": C.fmt_stat(st[side]["first"]),
                     "mean completion len": st[side]["len"]["median"],
                     "s per 1k completion tokens": st[side]["timed"]["median"]
                     / max(st[side]["len"]["median"] * args.prompts * args.group, 1e-9) * 1000,
                     "peak RSS GiB": max(r["peak_rss_bytes"] for r in runs[side]) / 2**30,
                     "timed steps": st[side]["timed"]["n"]})
    ratio = st["ours"]["timed"]["median"] / st["trl"]["timed"]["median"]
    ratio_first = st["ours"]["first"]["median"] / st["trl"]["first"]["median"]
    rows[0]["ratio ours/TRL"] = ratio
    rows[1]["ratio ours/TRL"] = None
    verdict = {"ratio": ratio, "ratio_first_step": ratio_first, "target": "<= 0.7", "met": ratio <= 0.7}
    table = C.markdown_table(rows)
    result = {"rows": rows, "runs": runs, "stats": st, "verdict": verdict, "table": table, "config": vars(args),
              "model": name}
    path = C.write_results(NAME, result, args.results_dir)
    if not args.quiet:
        print(f"## {NAME}: one RL step, {name}, {args.prompts} prompts x G={args.group}, <= {args.tokens} tokens, "
              f"lr {args.lr:g}, beta 0 ({args.reps} interleaved reps x {args.steps} steps, threads={args.threads})\n")
        print(table)
        print(f"\nours/TRL per step = {ratio:.2f} (first step: {ratio_first:.2f}); target <= 0.7: "
              f"{'MET' if verdict['met'] else 'MISSED'}")
        print(f"\nresults: {path}")
    return result


if __name__ == "__main__":
    main()
