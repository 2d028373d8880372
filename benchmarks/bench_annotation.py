"""Per-token log-prob + entropy for B x T response tokens: time and peak memory of three variants.

- ``bare``:  ``model(input_ids).logits`` -- the forward pass producing [B, T, V] logits, no entropy. The floor.
- ``naive``: full [B, T, V] logits -> ``naive_logprob_entropy`` (fp32 log_softmax over everything at once).
- ``ours``:  ``eapo.forward.sequence_logprobs``: decoder without its head -> hidden states at response positions ->
  ``logprob_entropy_from_hidden(chunk_size)``; [B, T, V] never exists. Run under ``torch.no_grad`` as annotation is.

All three run under ``torch.no_grad`` on the same random token ids (every position after the first is scored).
Time: interleaved reps, median and spread. Memory: each (variant, size) runs once in its own child process, which
loads the model, runs a small warm-up forward (so the weights are resident), resets the peak RSS to the current RSS
(``/proc/self/clear_refs``; otherwise loading's transient peak hides smaller ones), reads the peak RSS (``VmHWM``; see
``_common.maxrss_bytes`` for why not ``ru_maxrss``) as its baseline,
runs the variant once and reports the peak-RSS increase over that baseline. Agreement: max |ours - naive| over
log-probs and entropies. Targets (DESIGN §7): ours within 1.2x of the bare forward's time; memory bounded by the chunk
size (not growing with B*T*V); agreement <= 1e-5.

    .venv/bin/python benchmarks/bench_annotation.py                     # SmolLM2 + tiny, 3 sizes, ~3-4 min
    .venv/bin/python benchmarks/bench_annotation.py --sizes 8x128,32x160 --chunk 256 --reps 5
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

NAME = "bench_annotation"
VARIANTS = ("bare", "naive", "ours")
DEFAULT_SIZES = "4x64,8x128,16x128"


def parse_sizes(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        b, t = item.lower().split("x")
        out.append((int(b), int(t)))
    return out


def make_inputs(vocab: int, B: int, T: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    resp = torch.ones(B, T, dtype=torch.bool)
    resp[:, 0] = False  # position 0 has no prefix; every later token is scored
    return ids, mask, resp


def run_variant(variant: str, model, ids, mask, resp, chunk: int):
    """Returns (logp [B, T-1], entropy [B, T-1]) for naive/ours; (None, None) for bare."""
    import torch

    from eapo.core.entropy import naive_logprob_entropy
    from eapo.forward import sequence_logprobs

    with torch.no_grad():
        if variant == "bare":
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            return logits.shape, None
        if variant == "naive":
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            return naive_logprob_entropy(logits[:, :-1], ids[:, 1:])
        if variant == "ours":
            logp, ent = sequence_logprobs(model, ids, mask, resp, chunk_size=chunk)
            return logp[:, 1:], ent[:, 1:]
    raise ValueError(variant)


def child(argv: list[str]) -> None:
    """--child VARIANT MODEL B T CHUNK THREADS: peak-RSS increase of one run over the post-load baseline."""
    variant, name, B, T, chunk, threads = argv[0], argv[1], int(argv[2]), int(argv[3]), int(argv[4]), int(argv[5])
    C.set_threads(threads)
    policy = C.load(name)
    model = policy.model
    ids, mask, resp = make_inputs(model.config.vocab_size, B, T)
    warm = make_inputs(model.config.vocab_size, 1, 8, seed=1)
    run_variant("bare", model, *warm, chunk)  # touch every weight page before the baseline
    reset = C.reset_peak_rss()  # else loading's transient peak would hide anything smaller
    base = C.maxrss_bytes()
    t0 = time.perf_counter()
    run_variant(variant, model, ids, mask, resp, chunk)
    sec = time.perf_counter() - t0
    peak = C.maxrss_bytes()
    C.emit_child_result({"variant": variant, "model": name, "B": B, "T": T, "chunk": chunk, "baseline_rss": base,
                         "peak_rss": peak, "delta_bytes": peak - base, "seconds": sec,
                         "peak_reset": reset})


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--child":
        child(argv[1:])
        return {}
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(p, reps=3)
    p.add_argument("--sizes", default=DEFAULT_SIZES, help=f"BxT list (default {DEFAULT_SIZES})")
    p.add_argument("--chunk", type=int, default=256, help="chunk_size of ours (default 256, as params.yaml)")
    p.add_argument("--memory-sizes", default=None,
                   help="BxT list measured for peak memory (default: the same as --sizes); 'none' skips memory")
    args = p.parse_args(argv)
    models = args.model or [C.SMOLLM2, C.TINY]
    sizes = parse_sizes(args.sizes)
    mem_sizes = [] if args.memory_sizes == "none" else parse_sizes(args.memory_sizes or args.sizes)
    C.set_threads(args.threads)
    import torch

    rows, raw, vocabs = [], {}, {}
    for name in models:
        policy = C.load(name)
        model = policy.model
        V = vocabs[name] = model.config.vocab_size
        raw[name] = {}
        for B, T in sizes:
            ids, mask, resp = make_inputs(V, B, T)
            # agreement (and warm-up)
            lp_n, h_n = run_variant("naive", model, ids, mask, resp, args.chunk)
            lp_o, h_o = run_variant("ours", model, ids, mask, resp, args.chunk)
            diff_lp = float((lp_n - lp_o).abs().max())
            diff_h = float((h_n - h_o).abs().max())
            del lp_n, h_n, lp_o, h_o
            run_variant("bare", model, ids, mask, resp, args.chunk)
            times = {v: [] for v in VARIANTS}
            for rep in range(args.reps):
                order = VARIANTS if rep % 2 == 0 else VARIANTS[::-1]
                for v in order:
                    t0 = time.perf_counter()
                    run_variant(v, model, ids, mask, resp, args.chunk)
                    times[v].append(time.perf_counter() - t0)
            st = {v: C.summarize(times[v]) for v in VARIANTS}
            ntok = B * (T - 1)
            raw[name][f"{B}x{T}"] = {"times": times, "stats": st, "max_abs_diff_logp": diff_lp,
                                     "max_abs_diff_entropy": diff_h, "scored_tokens": ntok}
            for v in VARIANTS:
                rows.append({"model": name, "BxT": f"{B}x{T}", "variant": v,
                             "time s (median [min-max])": C.fmt_stat(st[v]), "tok/s": ntok / st[v]["median"],
                             "x bare": st[v]["median"] / st["bare"]["median"],
                             "max|ours-naive|": max(diff_lp, diff_h) if v == "ours" else None})
        del policy, model
        torch.set_num_threads(max(args.threads, 1))

    # Peak memory: one child process per (model, size, variant).
    mem_rows, mem_raw = [], []
    script = Path(__file__).resolve()
    for name in models:
        for B, T in mem_sizes:
            for v in VARIANTS:
                r = C.run_child(script, ["--child", v, name, str(B), str(T), str(args.chunk), str(args.threads)])
                mem_raw.append(r)
            by = {r["variant"]: r for r in mem_raw if r["model"] == name and (r["B"], r["T"]) == (B, T)}
            V = vocabs[name]
            mem_rows.append({"model": name, "BxT": f"{B}x{T}", "B*T": B * T,
                             **{f"{v} peak +MiB": by[v]["delta_bytes"] / 2**20 for v in VARIANTS},
                             "fp32 [B,T,V] MiB": B * T * V * 4 / 2**20})
    # bounded-ness: how ours' and naive's extra memory scale from the smallest to the largest size
    growth = {}
    for name in models:
        mine = [r for r in mem_rows if r["model"] == name]
        if len(mine) >= 2:
            a, b = mine[0], mine[-1]
            growth[name] = {f"{v}_growth_MiB": b[f"{v} peak +MiB"] - a[f"{v} peak +MiB"] for v in VARIANTS}
            growth[name]["tokens_ratio"] = b["B*T"] / a["B*T"]

    verdict = {}
    for name in models:
        ratios = [raw[name][k]["stats"]["ours"]["median"] / raw[name][k]["stats"]["bare"]["median"] for k in raw[name]]
        diffs = [max(raw[name][k]["max_abs_diff_logp"], raw[name][k]["max_abs_diff_entropy"]) for k in raw[name]]
        verdict[name] = {"ours/bare (worst size)": max(ratios), "throughput_met": max(ratios) <= 1.2,
                         "max_abs_diff": max(diffs), "agreement_met": max(diffs) <= 1e-5}
    table = C.markdown_table(rows)
    mem_table = C.markdown_table(mem_rows)
    result = {"rows": rows, "memory_rows": mem_rows, "memory_raw": mem_raw, "per_model": raw, "growth": growth,
              "verdict": verdict, "table": table, "memory_table": mem_table, "config": vars(args), "models": models}
    path = C.write_results(NAME, result, args.results_dir)
    if not args.quiet:
        print(f"## {NAME}: log-prob + entropy of B x (T-1) tokens ({args.reps} interleaved reps, chunk "
              f"{args.chunk}, threads={args.threads})\n")
        print(table)
        print("\n### peak RSS increase over the post-load baseline (one child process per cell)\n")
        print(mem_table)
        for name, v in verdict.items():
            print(f"\n{name}: ours/bare worst = {v['ours/bare (worst size)']:.2f}x (target <= 1.2: "
                  f"{'MET' if v['throughput_met'] else 'MISSED'}); max|ours-naive| = {v['max_abs_diff']:.2e} "
                  f"(target <= 1e-5: {'MET' if v['agreement_met'] else 'MISSED'})")
            if name in growth:
                g = growth[name]
                print(f"  memory from smallest to largest size ({g['tokens_ratio']:.0f}x tokens): naive "
                      f"+{g['naive_growth_MiB']:.0f} MiB, ours +{g['ours_growth_MiB']:.0f} MiB, bare "
                      f"+{g['bare_growth_MiB']:.0f} MiB")
        print(f"\nresults: {path}")
    return result


if __name__ == "__main__":
    main()
