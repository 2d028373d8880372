"""Achieved FLOP/s as a share of this machine's measured fp32 matmul peak (the physical limit, DESIGN §7-§8).

Per repetition, interleaved:

- ``peak``:   ``torch.mm`` of two fp32 N x N matrices (default 2048): 2 N^3 FLOPs; the best rep is the peak.
- ``decode``: our sampler (``sample(backend="fast")``) generating tokens. FLOPs per generated token are approximated as
  2 * n_params (every weight is one multiply-add per token; the tied embedding counts once, as the LM head) plus
  attention 4 * layers * context * hidden (QK^T and AV over the tokens in the KV cache, context = prompt + half the
  response on average). Sampling itself (softmax, draws) is not counted: it is overhead.
- ``gemm``:   the decode step's matmuls alone: every ``nn.Linear`` of the model (the LM head included) applied to
  ``[M, in]`` inputs, M = the decode batch. What the GEMM library reaches at that M is the ceiling of a decode
  step; the rest of the step (attention, the KV cache, RMSNorm, RoPE, sampling) is overhead around it.
- ``bandwidth``: memory bandwidth, ``y.copy_(x)`` of two 256 MiB fp32 buffers (read + write). With it the weights'
  bytes per decode step give the roofline: decode cannot beat ``2 * M * n_params / (weight bytes / bandwidth)``.
- ``prefill``: one batched forward over B x T tokens (``model(input_ids).logits``): 2 * n_params per token + attention
  (4 * layers * T/2 * hidden per token, causal). The best a forward pass can do here.
- ``train``:  forward + backward of ``eapo.forward.sequence_logprobs`` (the trainer's loss path) over B x T tokens:
  6 * n_params per token (forward 2, backward 4) + 3x the forward attention. The chunked LM head is recomputed in the
  backward (activation checkpointing): 2 * V * hidden more per token, not counted (that is overhead, not work).

    .venv/bin/python benchmarks/bench_flops.py                 # SmolLM2, 3 reps, ~2-3 min
    .venv/bin/python benchmarks/bench_flops.py --mm 1024 --batch 8 --tokens 32 --reps 5
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

NAME = "bench_flops"
KINDS = ("peak", "decode", "gemm", "prefill", "train")
STREAM_MIB = 256


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(p, reps=3)
    p.add_argument("--mm", type=int, default=2048, help="matmul size N (default 2048)")
    p.add_argument("--mm-iters", type=int, default=3, help="matmuls per peak measurement (default 3)")
    p.add_argument("--batch", type=int, default=16, help="decode rows / prefill+train batch (default 16)")
    p.add_argument("--tokens", type=int, default=32, help="decode max_new_tokens (default 32)")
    p.add_argument("--seq", type=int, default=96, help="prefill/train sequence length T (default 96)")
    args = p.parse_args(argv)
    name = (args.model or [C.SMOLLM2])[0]
    C.set_threads(args.threads)
    import torch
    from bench_annotation import make_inputs
    from bench_sampling import make_prompts

    from eapo.forward import sequence_logprobs
    from eapo.sampler import sample

    policy = C.load(name)
    model, tok = policy.model, policy.tokenizer
    cfg = model.config
    n_params = policy.info["n_params"]
    L, D, V = cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size
    n_prompts = max(1, args.batch // 4)
    prompts = make_prompts(tok, n_prompts)
    mean_prompt = sum(len(x) for x in prompts) / len(prompts)
    ids, mask, resp = make_inputs(V, args.batch, args.seq)
    a = torch.randn(args.mm, args.mm)
    b = torch.randn(args.mm, args.mm)

    def peak() -> tuple[float, float]:
        torch.mm(a, b)
        t0 = time.perf_counter()
        for _ in range(args.mm_iters):
            torch.mm(a, b)
        s = time.perf_counter() - t0
        return 2 * args.mm**3 * args.mm_iters / s, s

    def decode(seed: int) -> tuple[float, float, dict]:
        out = sample(model, tok, prompts, n=4, temperature=1.0, top_p=1.0, max_new_tokens=args.tokens, seed=seed,
                     batch_size=len(prompts) * 4, backend="fast")
        ntok, s = out.stats["tokens"], out.stats["seconds"]
        mean_len = sum(len(x.response_ids) for x in out) / len(out)
        ctx = mean_prompt + mean_len / 2
        flops = ntok * (2 * n_params + 4 * L * ctx * D)
        return flops / s, s, {"tokens": ntok, "tok_s": ntok / s}

    linears = [m.weight.detach() for m in model.modules() if isinstance(m, torch.nn.Linear)]
    gemm_inputs = [torch.randn(args.batch, w.shape[1]) for w in linears]
    weight_bytes = sum(w.numel() * w.element_size() for w in linears)
    weight_elems = sum(w.numel() for w in linears)
    src = torch.randn(STREAM_MIB * 2**20 // 4)
    dst = torch.empty_like(src)

    def gemm() -> tuple[float, float, dict]:
        with torch.no_grad():
            t0 = time.perf_counter()
            for x, w in zip(gemm_inputs, linears):
                torch.nn.functional.linear(x, w)
            s = time.perf_counter() - t0
        flops = sum(2 * x.shape[0] * w.numel() for x, w in zip(gemm_inputs, linears))
        return flops / s, s, {}

    def bandwidth() -> float:
        t0 = time.perf_counter()
        dst.copy_(src)
        return 2 * src.numel() * 4 / (time.perf_counter() - t0)

    def prefill() -> tuple[float, float, dict]:
        ntok = args.batch * args.seq
        with torch.no_grad():
            t0 = time.perf_counter()
            model(input_ids=ids, attention_mask=mask, use_cache=False)
            s = time.perf_counter() - t0
        flops = ntok * (2 * n_params + 4 * L * (args.seq / 2) * D)
        return flops / s, s, {"tokens": ntok, "tok_s": ntok / s}

    def train() -> tuple[float, float, dict]:
        ntok = args.batch * args.seq
        model.train()
        t0 = time.perf_counter()
        logp, _ = sequence_logprobs(model, ids, mask, resp, chunk_size=256)
        logp.sum().backward()
        s = time.perf_counter() - t0
        model.zero_grad(set_to_none=True)
        model.eval()
        flops = ntok * (6 * n_params + 3 * 4 * L * (args.seq / 2) * D)
        return flops / s, s, {"tokens": ntok, "tok_s": ntok / s}

    # warm-up
    peak()
    gemm()
    bandwidth()
    decode(999)
    prefill()
    train()
    meas: dict = {k: {"flops": [], "seconds": [], "tok_s": []} for k in KINDS}
    for rep in range(args.reps):
        order = KINDS if rep % 2 == 0 else KINDS[::-1]
        for k in order:
            if k == "peak":
                f, s = peak()
                extra = {}
            elif k == "decode":
                f, s, extra = decode(rep)
            elif k == "gemm":
                f, s, extra = gemm()
                meas.setdefault("bandwidth", []).append(bandwidth())
            elif k == "prefill":
                f, s, extra = prefill()
            else:
                f, s, extra = train()
            meas[k]["flops"].append(f)
            meas[k]["seconds"].append(s)
            meas[k]["tok_s"].append(extra.get("tok_s"))
    peak_best = max(meas["peak"]["flops"])
    rows = []
    for k in KINDS:
        stf = C.summarize([x / 1e9 for x in meas[k]["flops"]])
        tok = [x for x in meas[k]["tok_s"] if x is not None]
        rows.append({"what": {"peak": f"torch.mm {args.mm}^2 fp32", "decode": f"sampler decode B={len(prompts) * 4}",
                              "gemm": f"the decode step's matmuls alone, M={args.batch}",
                              "prefill": f"forward {args.batch}x{args.seq}",
                              "train": f"fwd+bwd sequence_logprobs {args.batch}x{args.seq}"}[k],
                     "FLOPs/token (approx)": {"peak": None, "decode": "2N + attn", "gemm": "2N (exact)",
                                              "prefill": "2N + attn",
                                              "train": "6N + 3x attn"}[k],
                     "GFLOP/s median [min-max]": C.fmt_stat(stf), "tok/s median": C.summarize(tok)["median"]
                     if tok else None,
                     "share of peak (median/best peak)": stf["median"] * 1e9 / peak_best,
                     "share of peak (best/best)": stf["max"] * 1e9 / peak_best})
    table = C.markdown_table(rows)
    # The roofline of a decode step at M rows: 2*M FLOPs per weight, every weight read once per step.
    bw = max(meas["bandwidth"])
    roofline = {"bandwidth_best_bytes_s": bw, "weight_bytes_per_step": weight_bytes,
                "bandwidth_bound_flops": 2 * args.batch * weight_elems / (weight_bytes / bw),
                "gemm_median_flops": C.summarize(meas["gemm"]["flops"])["median"]}
    roofline["bandwidth_bound_share_of_peak"] = roofline["bandwidth_bound_flops"] / peak_best
    roofline["gemm_share_of_peak"] = roofline["gemm_median_flops"] / peak_best
    roofline["decode_share_of_gemm"] = C.summarize(meas["decode"]["flops"])["median"] / roofline["gemm_median_flops"]
    result = {"rows": rows, "measurements": meas, "peak_best_flops": peak_best, "n_params": n_params,
              "roofline": roofline,
              "model": name, "table": table, "config": vars(args),
              "approximation": "decode/prefill 2*n_params per token + attention 4*layers*ctx*hidden; train 6*n_params "
                               "+ 3x attention; the recomputed chunked LM head and sampling are not counted"}
    path = C.write_results(NAME, result, args.results_dir)
    if not args.quiet:
        print(f"## {NAME}: achieved FLOP/s vs the fp32 matmul peak, {name} ({n_params / 1e6:.1f}M params, "
              f"{args.reps} interleaved reps, threads={args.threads})\n")
        print(table)
        print(f"\nmeasured fp32 matmul peak (best of {args.reps}): {peak_best / 1e9:.1f} GFLOP/s with "
              f"{args.threads} thread(s)")
        r = roofline
        print(f"\ndecode roofline at M={args.batch}: the weights are {weight_bytes / 2**20:.0f} MiB per step; at the "
              f"measured {bw / 1e9:.1f} GB/s memory bandwidth a step could run at "
              f"{r['bandwidth_bound_flops'] / 1e9:.0f} GFLOP/s ({r['bandwidth_bound_share_of_peak']:.0%} of peak), so "
              f"bandwidth is {'not ' if r['bandwidth_bound_share_of_peak'] >= 0.4 else ''}what caps decode below 40%. "
              f"The step's matmuls alone reach {r['gemm_median_flops'] / 1e9:.1f} GFLOP/s "
              f"({r['gemm_share_of_peak']:.0%} of peak: the GEMM library at small M); decode gets "
              f"{r['decode_share_of_gemm']:.0%} of that (its rows also finish and leave, so M shrinks).")
        print(f"\nresults: {path}")
    return result


if __name__ == "__main__":
    main()
