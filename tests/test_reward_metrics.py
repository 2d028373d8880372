"""Evaluation metrics say where the credit came from (issue 12): per extraction method, per dataset."""

from __future__ import annotations

import pandas as pd
import pytest

from eapo.evaluation import SAMPLE_COLUMNS, compute_metrics, flatten_metrics


def _rows(dataset: str, sampled: list[tuple[float, str]], greedy: list[tuple[float, str]]) -> list[dict]:
    rows = []
    for j, (reward, method) in enumerate(sampled):
        rows.append({"prompt_id": f"p{j // 2}", "sample_idx": j % 2, "mode": "sample", "reward": reward,
                     "extract_method": method})
    for j, (reward, method) in enumerate(greedy):
        rows.append({"prompt_id": f"p{j}", "sample_idx": -1, "mode": "greedy", "reward": reward,
                     "extract_method": method})
    for r in rows:
        r.update(model="m", dataset=dataset, response="x", answer="1", n_tokens=5, entropy_mean=1.0,
                 finish_reason="eos", reward_failure=None,
                 extracted=None if r["extract_method"] == "none" else "1")
    return rows


def test_credit_per_extraction_method_per_dataset():
    gsm = _rows("gsm8k", sampled=[(1.0, "boxed"), (0.0, "boxed"), (1.0, "last_number"), (1.0, "last_number"),
                                  (0.0, "answer_is"), (0.0, "none"), (1.0, "answer_is"), (1.0, "last_number")],
                greedy=[(1.0, "last_number"), (0.0, "boxed"), (1.0, "boxed"), (0.0, "none")])
    test = _rows("test", sampled=[(0.0, "none"), (0.0, "last_number")], greedy=[])
    df = pd.DataFrame(gsm + test)[list(SAMPLE_COLUMNS)]
    m = compute_metrics(df)
    g = m["gsm8k"]
    # 5 credited of 8 samples: 1 boxed, 1 answer_is, 3 last_number
    assert g["avg@2"] == pytest.approx(5 / 8)
    assert (g["acc_from_boxed"], g["acc_from_answer_is"], g["acc_from_last_number"]) == pytest.approx((1 / 8, 1 / 8,
                                                                                                          3 / 8))
    assert g["acc_from_boxed"] + g["acc_from_answer_is"] + g["acc_from_last_number"] == pytest.approx(g["avg@2"])
    assert (g["credit_share_boxed"], g["credit_share_answer_is"], g["credit_share_last_number"]) == pytest.approx(
        (0.2, 0.2, 0.6))
    assert (g["greedy_acc_from_boxed"], g["greedy_acc_from_last_number"]) == pytest.approx((0.25, 0.25))
    t = m["test"]  # no credit at all: shares are 0, not NaN
    assert t["credit_share_last_number"] == 0.0 and t["acc_from_last_number"] == 0.0
    flat = flatten_metrics(m)
    assert flat["gsm8k.credit_share_last_number"] == pytest.approx(0.6)
