"""Matplotlib figures for the annotate and report stages (PNG, since `dvc plots show` HTML loads vega from a CDN)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def entropy_histogram(entropy: np.ndarray, tau: float, path: str | Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.hist(entropy, bins=60, color="#4c72b0", alpha=0.85)
    ax.axvline(tau, color="#c44e52", linestyle="--", label=f"τ = {tau:.3f} nats")
    ax.set_xlabel("token entropy H (nats)")
    ax.set_ylabel("tokens")
    ax.set_yscale("log")
    ax.set_title("Response-token entropy")
    ax.legend()
    return _save(fig, path)


def quadrant_shares(stats: dict, path: str | Path, title: str = "Token share vs GRPO gradient share") -> Path:
    names = list(stats)
    tok = [stats[q]["share"] for q in names]
    grad = [stats[q]["grad_share"] for q in names]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.bar(x - 0.2, tok, 0.4, label="token share", color="#8c8c8c")
    ax.bar(x + 0.2, grad, 0.4, label="gradient share Σ|Â|·‖∇‖", color="#dd8452")
    ax.set_xticks(x, names)
    ax.set_ylabel("share")
    ax.set_title(title)
    ax.legend()
    return _save(fig, path)


def cmi_vs_entropy(entropy: np.ndarray, cmi: np.ndarray, lo: np.ndarray, hi: np.ndarray, path: str | Path) -> Path:
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    yerr = np.vstack([np.maximum(cmi - lo, 0), np.maximum(hi - cmi, 0)])
    ax.errorbar(entropy, cmi, yerr=yerr, fmt="o", ms=4, alpha=0.8, color="#4c72b0", label="CMI estimate (CI)")
    top = float(max(np.max(entropy, initial=0.1), np.max(hi, initial=0.1))) * 1.05
    ax.plot([0, top], [0, top], "--", color="#c44e52", label="I = H (bound)")
    ax.axhline(np.log(2), color="#999999", lw=0.8, label="ln 2 (binary reward max)")
    ax.set_xlabel("token entropy H_t (nats)")
    ax.set_ylabel("Î(y_t; R | h_t) (nats)")
    ax.set_title("CMI vs entropy")
    ax.legend(fontsize=8)
    return _save(fig, path)


def curves(series: dict[str, tuple[Sequence[float], Sequence[float]]], ylabel: str, path: str | Path,
           title: str) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for name, (x, y) in series.items():
        ax.plot(x, y, marker="o", ms=3, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=2)
    return _save(fig, path)


def bars_with_ci(names: Sequence[str], est: Sequence[float], lo: Sequence[float], hi: Sequence[float],
                 ylabel: str, path: str | Path, title: str) -> Path:
    est, lo, hi = (np.asarray(v, dtype=float) for v in (est, lo, hi))
    fig, ax = plt.subplots(figsize=(7, 3.8))
    x = np.arange(len(names))
    ax.bar(x, est, color="#4c72b0", alpha=0.85)
    ax.errorbar(x, est, yerr=np.vstack([est - lo, hi - est]), fmt="none", ecolor="black", capsize=3)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(fig, path)
