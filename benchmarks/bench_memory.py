"""Peak memory of one training update at batch 32 x 160 tokens: the trainer's ``accumulate_gradients`` (micro-batches
of ``train.micro_batch_size`` sequences, prefix sharing, chunked log-prob, ``eapo.saved_activations``) + AdamW step,
against a naive update of the same batch in one piece (a full ``[B, T, V]`` logits tensor, fp32 ``log_softmax``, the
same clipped surrogate).

The floor: the fp32 weights, their gradients and AdamW's two moments are 4 x 4 bytes per parameter (2.16 GB for
SmolLM2-135M); nothing a step does can go below that. Each cell is a fresh child process: it loads the model, runs one
warm-up update (so the gradients and Adam's moments exist and are resident, as in every step after the first), resets
the peak RSS to the current RSS (``/proc/self/clear_refs``, as ``bench_annotation`` does), runs the measured update and
reads the high-water mark (``VmHWM``). Reported: that absolute peak, its increase over the post-warm-up RSS, and the
step time. Target (issue 14): peak <= 4 GB at 32 x 160 for the trainer's update.

    .venv/bin/python benchmarks/bench_memory.py                          # SmolLM2, 8 prompts x G 4, 60 + 100 tokens
    .venv/bin/python benchmarks/bench_memory.py --model tiny-random-llama --reps 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

NAME = "bench_memory"
VARIANTS = ("ours", "naive")
GIB = 1024**3


def make_rollouts(vocab: int, prompts: int, group: int, prompt_tokens: int, response_tokens: int, seed: int = 0):
    """``prompts`` x ``group`` rollouts of ``prompt_tokens`` + ``response_tokens`` random ids, with old log-probs and
    advantages of both signs (the shapes of a real step; the values do not change the memory)."""
    import torch

    from eapo.forward import Rollout

    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(prompts):
        prompt = torch.randint(3, vocab, (prompt_tokens,), generator=gen).tolist()
        for _ in range(group):
            resp = torch.randint(3, vocab, (response_tokens,), generator=gen).tolist()
            old = (-torch.rand(response_tokens, generator=gen) * 5).tolist()
            adv = torch.randn(response_tokens, generator=gen).tolist()
            out.append(Rollout(prompt_ids=prompt, response_ids=resp, old_logp=old, adv_tokens=adv))
    return out


def naive_update(model, rollouts, cfg) -> float:
    """The whole batch in one forward: [B, T, V] logits, fp32 log_softmax, token-mean clipped surrogate."""
    import torch

    from eapo.core.losses import policy_loss_terms
    from eapo.forward import collate

    mb = collate(rollouts, 0, next(model.parameters()).device)
    logits = model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"], use_cache=False).logits
    logp_all = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    logp = logp_all.gather(-1, mb["input_ids"][:, 1:, None]).squeeze(-1)
    logp = torch.nn.functional.pad(logp, (1, 0))  # position t holds log p(token t | < t), as the trainer's
    terms = policy_loss_terms(logp, mb["old_logp"], mb["adv"], mb["response_mask"], cfg.clip_low, cfg.clip_high)
    loss = terms[mb["response_mask"]].sum() / mb["response_mask"].sum()
    loss.backward()
    return float(loss.detach())


def child(variant: str, name: str, threads: int, prompts: int, group: int, prompt_tokens: int, response_tokens: int,
          micro_batch: int) -> None:
    import torch

    from eapo.config import TrainConfig
    from eapo.trainer import accumulate_gradients, loss_denominator

    C.set_threads(threads)
    policy = C.load(name)
    model = policy.model
    model.train()
    if variant == "ours":  # as eapo.trainer.train does before its first update
        from eapo import saved_activations

        saved_activations.apply(model)
    cfg = TrainConfig(micro_batch_size=micro_batch)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-7)
    rollouts = make_rollouts(model.config.vocab_size, prompts, group, prompt_tokens, response_tokens)
    pad = policy.tokenizer.pad_token_id or 0

    def update() -> None:
        if variant == "ours":
            accumulate_gradients(model, rollouts, cfg, denom=loss_denominator(rollouts, cfg.agg), pad_id=pad)
        else:
            naive_update(model, rollouts, cfg)
        opt.step()
        opt.zero_grad(set_to_none=False)  # keep the gradient buffers, as a resident steady state

    update()  # warm-up: gradients and Adam's moments now exist
    reset = C.reset_peak_rss()
    base = C.maxrss_bytes()
    t0 = time.perf_counter()
    update()
    sec = time.perf_counter() - t0
    peak = C.maxrss_bytes()
    n_params = sum(p.numel() for p in model.parameters())
    C.emit_child_result({"variant": variant, "peak_rss": peak, "baseline_rss": base, "delta_bytes": peak - base,
                         "seconds": sec, "floor_bytes": 16 * n_params, "micro_batch_size": cfg.micro_batch_size,
                         "peak_reset": reset})


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--child":
        a = argv[1:]
        child(a[0], a[1], *map(int, a[2:8]))
        return {}
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(p, reps=2)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=4, help="responses per prompt (batch = prompts x group)")
    p.add_argument("--prompt-tokens", type=int, default=60)
    p.add_argument("--response-tokens", type=int, default=100)
    p.add_argument("--micro-batch", type=int, default=None,
                   help="the trainer's micro_batch_size (default: TrainConfig's, as params.yaml)")
    p.add_argument("--preload", default=None, metavar="LIB",
                   help="a malloc to run the children with (LD_PRELOAD), e.g. "
                        "/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4: glibc's heap keeps freed activations resident")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS,
                   help="updates to measure (default both; naive needs ~14 GiB at 32 x 160 on SmolLM2)")
    args = p.parse_args(argv)
    from eapo.config import TrainConfig

    model = (args.model or [C.SMOLLM2])[0]
    micro = args.micro_batch or TrainConfig().micro_batch_size
    shape = [str(x) for x in (args.prompts, args.group, args.prompt_tokens, args.response_tokens, micro)]
    variants = [v for v in VARIANTS if v in args.variants]
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for rep in range(args.reps):
        for v in (variants if rep % 2 == 0 else variants[::-1]):  # interleaved: A B B A ...
            runs[v].append(C.run_child(Path(__file__), ["--child", v, model, str(args.threads), *shape],
                                       env={"LD_PRELOAD": args.preload} if args.preload else None))
    rows = []
    for v in variants:
        peak = C.summarize([r["peak_rss"] / GIB for r in runs[v]])
        rows.append({"update": v, "peak RSS GiB": C.fmt_stat(peak),
                     "over post-warm-up GiB": C.fmt_stat(C.summarize([r["delta_bytes"] / GIB for r in runs[v]])),
                     "seconds": C.fmt_stat(C.summarize([r["seconds"] for r in runs[v]]))})
    median = {v: sorted(r["peak_rss"] for r in runs[v])[len(runs[v]) // 2] for v in variants}
    ours, naive = median.get("ours"), median.get("naive")
    floor = next(iter(runs.values()))[0]["floor_bytes"]
    payload = {"model": model, "batch": args.prompts * args.group, "tokens": args.prompt_tokens + args.response_tokens,
               "micro_batch_size": micro, "preload": args.preload, "rows": rows, "raw": runs, "floor_bytes": floor,
               "ours_over_naive": ours / naive if ours and naive else None, "ours_peak_bytes": ours,
               "machine": C.machine_info()}
    if not args.quiet:
        print(f"## {NAME}: one update of {args.prompts * args.group} x {args.prompt_tokens + args.response_tokens} "
              f"tokens ({model}), micro-batches of {micro}{f', malloc {args.preload}' if args.preload else ''}\n")
        print(C.markdown_table(rows))
        print(f"\nfloor (fp32 weights + grads + AdamW moments): {floor / GIB:.2f} GiB")
        if ours and naive:
            print(f"ours / naive peak: {ours / naive:.2f}")
        if ours:
            print(f"ours {ours / GIB:.2f} GiB against the 4 GB target ({'met' if ours <= 4e9 else 'missed'})")
    C.write_results(NAME, payload, args.results_dir)
    return payload


if __name__ == "__main__":
    main()
