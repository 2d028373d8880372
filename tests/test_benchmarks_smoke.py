"""Smoke test of benchmarks/: each benchmark's ``main(argv)`` runs on the tiny random model at the smallest sizes and
returns a table with the expected rows and positive numbers. Timings are not checked (that is what the benchmarks are
for). The orchestration benchmark talks to a Prefect server and runs DVC, so it is exercised only in its cheapest
form (prepare stage, no rollout, no ephemeral start, no dvc) and only when a local server answers."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = "tiny-random-llama"


def _load(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture
def out(tmp_path):
    return ["--results-dir", str(tmp_path), "--quiet", "--model", TINY, "--reps", "1"]


def test_sampling(out, tmp_path):
    res = _load("bench_sampling").main([*out, "--prompts", "1", "--n", "2", "--tokens", "3"])
    assert [(r["model"], r["backend"]) for r in res["rows"]] == [(TINY, "fast"), (TINY, "generate")]
    assert all(_positive(r["tok/s median"]) for r in res["rows"])
    assert _positive(res["rows"][0]["ratio fast/generate"])
    info = res["per_model"][TINY]
    assert 0 < info["matmul_share"] <= 1 and info["ratio_ceiling"] >= info["ratio_of_medians"]
    assert (tmp_path / "bench_sampling.json").is_file()


def test_annotation(out, tmp_path):
    res = _load("bench_annotation").main([*out, "--sizes", "2x8", "--chunk", "4", "--memory-sizes", "2x8"])
    assert [r["variant"] for r in res["rows"]] == ["bare", "naive", "ours"]
    assert all(_positive(r["tok/s"]) for r in res["rows"])
    assert res["verdict"][TINY]["max_abs_diff"] <= 1e-5
    (mem,) = res["memory_rows"]
    assert all(mem[f"{v} peak +MiB"] >= 0 for v in ("bare", "naive", "ours"))
    assert (tmp_path / "bench_annotation.json").is_file()


def test_threading(out, tmp_path):
    res = _load("bench_threading").main([*out, "--batch", "2", "--tokens", "8", "--steps", "1",
                                         "--thread-counts", "1", "--policies", "PASSIVE", "spin=1000"])
    assert [(r["threads"], r["wait policy"]) for r in res["rows"]] == [(1, "PASSIVE"), (1, "spin=1000")]
    # each child ran under its own policy, whatever eapo or the parent's environment set
    assert res["child_env"] == {"PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": None},
                                "spin=1000": {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "1000"}}
    assert all(_positive(r["loaded / alone"]) for r in res["rows"])
    assert all(len(v) == 1 and _positive(v[0]) for v in res["raw"].values())


def test_memory(out, tmp_path):
    res = _load("bench_memory").main([*out, "--reps", "1", "--prompts", "2", "--group", "2", "--prompt-tokens", "4",
                                      "--response-tokens", "4", "--micro-batch", "2"])
    assert [r["update"] for r in res["rows"]] == ["ours", "naive"]
    assert res["batch"] == 4 and res["tokens"] == 8 and res["micro_batch_size"] == 2
    assert all(r["peak_rss"] >= r["baseline_rss"] > 0 for v in res["raw"].values() for r in v)
    assert res["floor_bytes"] > 0 and _positive(res["ours_over_naive"])


def test_startup(out, tmp_path, prefect_api):
    res = _load("bench_startup").main([*out, "--model", TINY, "--reps", "1", "--skip-imports", "--stages", "prepare",
                                       "--api-url", prefect_api])
    assert [r["what"] for r in res["rows"]] == ["python -c pass", "stage prepare (8 prompts)",
                                                 "stage prepare (8 prompts), no .pyc",
                                                 "stage prepare (8 prompts), warm"]
    assert all(len(v) == 1 and _positive(v[0]) for v in res["raw"].values())
    assert res["rows"][1]["over bare interpreter s"] > 0


def test_flops(out, tmp_path):
    res = _load("bench_flops").main([*out, "--mm", "64", "--mm-iters", "1", "--batch", "4", "--tokens", "2",
                                     "--seq", "8"])
    assert len(res["rows"]) == 5
    assert all(_positive(r["share of peak (median/best peak)"]) for r in res["rows"])
    assert _positive(res["peak_best_flops"])
    roof = res["roofline"]
    assert all(_positive(roof[k]) for k in ("bandwidth_best_bytes_s", "bandwidth_bound_flops", "gemm_median_flops",
                                            "decode_share_of_gemm"))
    # fp32 weights: the bandwidth roofline is M * bandwidth / 2 FLOP/s (2 FLOPs per 4-byte weight per row)
    assert roof["bandwidth_bound_flops"] == pytest.approx(4 * roof["bandwidth_best_bytes_s"] / 2)


@pytest.mark.skipif(importlib.util.find_spec("trl") is None,
                    reason="trl is not installed (the `bench` extra: pip install -e '.[bench]')")
def test_train_step(out, tmp_path):
    res = _load("bench_train_step").main([*out, "--steps", "1", "--tokens", "4", "--prompts", "2", "--group", "2"])
    assert [r["trainer"] for r in res["rows"]] == ["eapo.trainer.train", "trl GRPOTrainer 1.16"]
    assert all(_positive(res["stats"][s]["timed"]["median"]) for s in ("ours", "trl"))
    assert _positive(res["verdict"]["ratio"])


def test_device_on_cpu(out, tmp_path):
    """bench_device's four parts on the CPU (its device is CUDA elsewhere): the sampler's records match a plain
    forward, the CPU copy agrees with itself exactly, and two deterministic training runs write the same model."""
    res = _load("bench_device").main([*out, "--device", "cpu", "--batches", "4", "--tokens", "3", "--steps", "2",
                                      "--memory-size", "1x2x8x4"])
    assert [(r["batch"], r["backend"]) for r in res["sampler"]["rows"]] == [(4, "fast"), (4, "generate")]
    assert all(r["max |Δ logp| vs forward"] <= 1e-4 for r in res["sampler"]["rows"])
    agree = res["agreement"]
    assert agree["max_abs_diff_logp"] == 0 and agree["grad_rel_diff"] == 0 and agree["grad_norm_cpu"] > 0
    train = res["training"]
    assert len(train["rows"]) == 5 and all(r["finite weights"] for r in train["rows"])
    assert train["fp32"] == {"same_model_bytes": True, "same_step_rows": True, "max_abs_weight_diff": 0.0}
    assert res["memory"]["batch"] == "2 x 12" and _positive(res["memory"]["floor_gib"])
    assert (tmp_path / "bench_device.json").is_file()


def test_device_random_init_has_the_exported_architecture(tmp_path):
    """--export-config writes a model's config and tokenizer without weights; --random-init builds that architecture
    with seeded weights, loadable as a local model directory."""
    mod = _load("bench_device")
    exported = mod.export_config(TINY, tmp_path / "config")
    assert (exported / "config.json").is_file() and not list(exported.glob("*.safetensors"))
    a = mod.random_init_dir(exported, seed=0, dest=tmp_path / "a")
    b = mod.random_init_dir(exported, seed=0, dest=tmp_path / "b")
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    policy = mod.load_on(str(a), "cpu")
    assert policy.info["kind"] == "local" and policy.info["n_params"] > 0
    assert policy.tokenizer("2 + 2")["input_ids"]


def _server_up() -> bool:
    try:
        from flows.server import api_url, healthy

        return healthy(api_url())
    except (ImportError, OSError):
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _server_up(), reason="no local Prefect server on 127.0.0.1:4200 (`make server`)")
def test_orchestration(out, tmp_path):
    res = _load("bench_orchestration").main([*out, "--skip-rollout", "--skip-ephemeral", "--skip-dvc"])
    (row,) = res["rows"]
    assert row["stage"] == "prepare"
    assert "prepare" in res["verdict"]


def test_stage_costs_reads_the_run_records(tmp_path, capsys):
    from eapo.stageio import StageOutputs

    for stage in ("train@grpo-0", "prepare"):
        folder = tmp_path / stage.replace("@", "_")
        with StageOutputs(stage, [folder / "out.txt"]) as staged:
            staged.path(folder / "out.txt").write_text(stage)
    res = _load("stage_costs").main(["--data", str(tmp_path)])
    assert [r["stage"] for r in res["rows"]] == ["prepare", "train@grpo-0"]  # pipeline order, not file order
    assert all(_positive(r["seconds"]) and _positive(r["peak RSS MiB"]) for r in res["rows"])
    assert [r["warm"] for r in res["rows"]] == [False, False]  # this process was not forked by a warm server
    assert "| prepare |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no run records"):
        _load("stage_costs").main(["--data", str(tmp_path / "empty")])
