"""Stage `evaluate`: the pass@k / avg@k path on hand-made tables, and the flow end to end on the tiny model."""

from __future__ import annotations

import json
import math
from itertools import combinations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from eapo.evaluation import (
    SAMPLE_COLUMNS,
    compute_metrics,
    dataset_metrics,
    flatten_metrics,
    pass_at_k_per_prompt,
    per_prompt_accuracy,
)
from tests.conftest import BENCHMARKS, ROOT

torch.set_num_threads(1)


def brute_force_pass_at_k(rewards, k):
    """pass@k by its definition: the share of k-subsets of the n samples that contain a correct one."""
    subsets = list(combinations(range(len(rewards)), k))
    assert len(subsets) == math.comb(len(rewards), k)
    return sum(any(rewards[i] > 0 for i in s) for s in subsets) / len(subsets)


def make_samples(per_prompt_rewards: dict[str, list[float]], dataset="test", greedy=None, n_tokens=None,
                 entropy=None, extracted=None, finish=None) -> pd.DataFrame:
    rows = []
    for pid, rewards in per_prompt_rewards.items():
        if greedy is not None:
            rows.append({"prompt_id": pid, "sample_idx": -1, "mode": "greedy", "reward": greedy[pid]})
        for j, r in enumerate(rewards):
            rows.append({"prompt_id": pid, "sample_idx": j, "mode": "sample", "reward": r})
    df = pd.DataFrame(rows)
    df["model"], df["dataset"], df["response"], df["answer"] = "m", dataset, "x", "1"
    df["extracted"] = extracted if extracted is not None else "1"
    df["extract_method"], df["reward_failure"] = "last_number", None
    df["n_tokens"] = n_tokens if n_tokens is not None else 5
    df["entropy_mean"] = entropy if entropy is not None else 1.0
    df["finish_reason"] = finish if finish is not None else "eos"
    return df[list(SAMPLE_COLUMNS)]


def test_pass_at_k_matches_brute_force_enumeration():
    rng = np.random.default_rng(0)
    n = 7
    table = {f"p{c}": [1.0] * c + [0.0] * (n - c) for c in range(n + 1)}  # every c in 0..n
    table = {pid: list(rng.permutation(r)) for pid, r in table.items()}  # order must not matter
    table["rand"] = list(rng.integers(0, 2, n).astype(float))
    df = make_samples(table)
    metrics = dataset_metrics(df, ks=range(1, n + 1))
    for k in range(1, n + 1):
        per_prompt = pass_at_k_per_prompt(df, k)
        expected = {pid: brute_force_pass_at_k(r, k) for pid, r in table.items()}
        for pid, v in expected.items():
            assert per_prompt[pid] == pytest.approx(v, abs=1e-12), (pid, k)
        assert metrics[f"pass@{k}"] == pytest.approx(np.mean(list(expected.values())), abs=1e-12)
    # pass@1 is avg@n, and the default ks are {1, n}
    assert metrics["pass@1"] == pytest.approx(metrics[f"avg@{n}"])
    assert {k for k in dataset_metrics(df) if k.startswith("pass@")} == {"pass@1", f"pass@{n}"}
    with pytest.raises(ValueError, match="pass@9"):
        dataset_metrics(df, ks=[9])


def test_metrics_aggregation_on_hand_made_table():
    # prompt a: 2/3 correct, greedy right; prompt b: 0/3, greedy wrong.
    df = make_samples({"a": [1.0, 0.0, 1.0], "b": [0.0, 0.0, 0.0]}, greedy={"a": 1.0, "b": 0.0},
                      n_tokens=[4, 2, 6, 2, 10, 10, 10, 10], entropy=[9.0, 1.0, 2.0, 3.0, 9.0, 0.5, 0.5, 0.5],
                      extracted=["1", "1", None, "2", None, "3", "3", None],
                      finish=["eos", "eos", "length", "eos", "eos", "length", "eos", "eos"])
    other = make_samples({"c": [1.0, 1.0, 1.0]}, dataset="gsm8k")
    m = compute_metrics(pd.concat([df, other], ignore_index=True))
    assert list(m) == ["test", "gsm8k"]
    t = m["test"]
    assert t["prompts"] == 2 and t["samples_per_prompt"] == 3
    assert t["greedy_acc"] == pytest.approx(0.5)
    assert t["avg@3"] == pytest.approx((2 / 3 + 0) / 2)
    assert t["pass@1"] == pytest.approx(t["avg@3"])
    assert t["pass@3"] == pytest.approx(0.5)
    sampled_tokens = np.array([2, 6, 2, 10, 10, 10])
    sampled_entropy = np.array([1.0, 2.0, 3.0, 0.5, 0.5, 0.5])
    assert t["mean_length"] == pytest.approx(sampled_tokens.mean())
    assert t["mean_entropy"] == pytest.approx((sampled_tokens * sampled_entropy).sum() / sampled_tokens.sum())
    assert t["extraction_rate"] == pytest.approx(4 / 6)  # sampled rows only: "1", None, "2", "3", "3", None
    assert t["eos_rate"] == pytest.approx(4 / 6)
    assert t["greedy_length"] == pytest.approx(7.0) and t["greedy_extraction_rate"] == pytest.approx(0.5)
    assert m["gsm8k"]["avg@3"] == 1.0 and m["gsm8k"]["pass@3"] == 1.0 and "greedy_acc" not in m["gsm8k"]
    flat = flatten_metrics(m)
    assert flat["test.avg@3"] == t["avg@3"] and flat["gsm8k.pass@1"] == 1.0
    assert all(isinstance(v, (int, float)) for v in flat.values())
    acc = per_prompt_accuracy(df, "test", "sample")
    assert acc.to_dict() == pytest.approx({"a": 2 / 3, "b": 0.0})


def test_unequal_sample_counts_are_an_error():
    with pytest.raises(ValueError, match="unequal"):
        dataset_metrics(make_samples({"a": [1.0, 0.0], "b": [1.0]}))


def _tiny_params(tmp_path, variants=("grpo",), benchmarks=()):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key in list(raw["paths"]):
        raw["paths"][key] = str(tmp_path / raw["paths"][key].replace("data/", ""))
    raw["paths"]["model_cache"] = str(ROOT / ".cache" / "models")
    raw["model"].update(name_or_path="tiny-random-llama", threads=1)
    raw["prepare"]["synthetic"]["n"] = 24
    raw["reward"]["workers"] = 1
    raw["study"]["variants"] = list(variants)
    raw["evaluate"].update(num_prompts=3, k=3, pass_k=[1, 3], max_new_tokens=6, batch_size=16,
                           benchmarks=list(benchmarks))
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_evaluate_flow_end_to_end_on_tiny_model(prefect_api, tmp_path):
    from eapo.config import load_params
    from eapo.contracts import read_artifact
    from eapo.lineage import read_lineage
    from eapo.policy import load_policy
    from flows.evaluate import evaluate_flow
    from flows.prepare import prepare_flow

    benches = ([{"name": "gsm8k", "kind": "gsm8k", "path": str(BENCHMARKS / "gsm8k/test.jsonl"), "limit": 2}]
               if (BENCHMARKS / "gsm8k/test.jsonl").is_file() else [])
    params_path = _tiny_params(tmp_path, benchmarks=benches)
    prepare_flow(params_path=str(params_path))
    p = load_params(params_path)

    # A variant not trained yet: a clear error naming the checkpoint directory.
    with pytest.raises(FileNotFoundError, match="grpo/seed0/model"):
        evaluate_flow(params_path=str(params_path), name="grpo")
    with pytest.raises(ValueError, match="unknown model name"):
        evaluate_flow(params_path=str(params_path), name="nope")

    metrics = evaluate_flow(params_path=str(params_path), name="base")
    table, lin = read_artifact(tmp_path / "evaluate/base/samples.parquet", "samples")
    df = table.to_pandas()
    datasets = ["test"] + [b["name"] for b in benches]
    assert list(metrics) == datasets
    for ds, n_prompts in zip(datasets, [3] + [2] * len(benches)):
        d = df[df.dataset == ds]
        assert (d["mode"] == "greedy").sum() == n_prompts and (d["mode"] == "sample").sum() == 3 * n_prompts
        assert set(d.loc[d["mode"] == "greedy", "sample_idx"]) == {-1}
        assert metrics[ds]["prompts"] == n_prompts
        assert {"greedy_acc", "avg@3", "pass@1", "pass@3", "mean_length", "mean_entropy",
                "extraction_rate"} <= set(metrics[ds])
    on_disk = json.loads((tmp_path / "metrics/base.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert all(isinstance(v, (int, float)) for m in on_disk.values() for v in m.values())
    assert set(df["model"]) == {"base"}
    assert lin.stage == "evaluate" and "prompts_test" in lin.inputs
    assert lin.extra["model"]["kind"] == "tiny-random" and lin.extra["model_name"] == "base"
    side = read_lineage(tmp_path / "metrics/base.json")
    assert side is not None and side.params_hash == lin.params_hash
    # greedy decoding is deterministic: re-decoding the first test prompt greedily gives the same response.
    first = df[(df.dataset == "test") & (df["mode"] == "greedy")].sort_values("prompt_id").iloc[0]

    # A trained variant: its checkpoint directory is evaluated and recorded as an input.
    pol = load_policy("tiny-random-llama", cache_dir=p.paths.model_cache)
    ckpt = tmp_path / "train/grpo/seed1/model"  # study replicate 1
    pol.model.save_pretrained(ckpt)
    pol.tokenizer.save_pretrained(ckpt)
    with pytest.raises(ValueError, match="no study seed"):
        evaluate_flow(params_path=str(params_path), name="base", seed=1)
    evaluate_flow(params_path=str(params_path), overrides={"evaluate.benchmarks": [], "study.seeds": [0, 1]},
                  name="grpo", seed=1)
    assert not (tmp_path / "evaluate/grpo/seed0").exists()
    vt, vlin = read_artifact(tmp_path / "evaluate/grpo/seed1/samples.parquet", "samples")
    vdf = vt.to_pandas()
    assert set(vdf["model"]) == {"grpo"} and vlin.inputs["model"]["path"] == str(ckpt)
    assert vlin.extra["model"]["checkpoint"] == str(ckpt) and vlin.extra["model"]["kind"] == "local"
    assert vlin.extra["study_seed"] == 1
    same = vdf[(vdf.dataset == "test") & (vdf["mode"] == "greedy") & (vdf.prompt_id == first.prompt_id)].iloc[0]
    assert same.response == first.response  # same weights, greedy: identical decode
    assert json.loads((tmp_path / "metrics/grpo/seed1.json").read_text())["test"]["prompts"] == 3
