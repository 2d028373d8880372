"""Every expectation of every contract in eapo.contracts rejects a row that breaks it (issue 16).

For each contract a small valid frame is written first (so the breakage, not the frame, is what fails); then, for
each expectation, one row (row 2) is broken so as to violate that expectation, and the write must fail with a
``ContractError`` that names the expectation, its column(s) and the row, leaving no file behind. A last test checks
that the cases cover every declared expectation, so an expectation added later without a rejection case fails here.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from eapo.contracts import CONTRACTS, ContractError, Expect, write_artifact
from eapo.lineage import make_lineage

N = 4
BAD = 2  # the row each case breaks
TAU = 1.0


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


# ----------------------------------------------------------------------------------------------------------------------
# Valid frames


def prompts_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "id": [f"p{i}" for i in range(N)], "source": ["synthetic"] * N,
        "prompt": [f"What is {i} + 1?" for i in range(N)], "answer": [str(i + 1) for i in range(N)],
        "split": ["train", "test", "train", "test"], "difficulty": ["add-1"] * N, "family": ["add"] * N,
        "meta": ["{}"] * N,
    })


def rollouts_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "prompt_id": ["p0", "p0", "p1", "p1"], "sample_idx": [0, 1, 0, 1],
        "prompt": ["q0", "q0", "q1", "q1"], "answer": ["1", "1", "2", "2"],
        "response": ["1", "2", "2", "x"],
        "prompt_ids": [[1, 2, 3]] * N,
        "response_ids": [[5, 6], [7], [8, 9, 10], [11]],
        "logprobs": [[-0.5, -1.0], [-0.1], [-2.0, -0.3, 0.0], [-4.0]],
        "entropies": [[0.5, 1.5], [0.0], [2.0, 0.2, 0.1], [3.0]],
        "sum_p_sq": [[0.5, 0.25], [1.0], [0.1, 0.8, 0.9], [0.05]],
        "n_tokens": [2, 1, 3, 1], "reward": [1.0, 0.0, 1.0, 0.0],
        "extracted": ["1", "2", "2", None], "extract_method": ["boxed", "answer_is", "last_number", "none"],
        "finish_reason": ["eos", "length", "eos", "length"], "reward_failure": [None] * N, "step": [0] * N,
    })


def tokens_frame() -> pd.DataFrame:
    entropy = np.array([0.1, 2.0, 0.2, 3.0], dtype=np.float32)
    adv = np.array([1.0, 1.0, -1.0, -1.0], dtype=np.float32)
    return pd.DataFrame({
        "prompt_id": ["p"] * N, "sample_idx": [0] * N, "position": list(range(N)), "token_id": [5, 6, 7, 8],
        "token_text": ["a", "b", "c", "d"], "entropy": entropy, "logprob": [-0.5, -0.1, -2.0, 0.0],
        "advantage": adv, "reward": [1.0, 1.0, 0.0, 0.0],
        "quadrant": ["pos_low", "pos_high", "neg_low", "neg_high"],  # with τ = 1.0
        "grad_norm": [0.5, 1.0, 0.0, 1.4],
    })


def cmi_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "prompt_id": ["p0", "p0", "p1", "p1"], "sample_idx": [0, 0, 1, 1], "position": [0, 3, 0, 3],
        "entropy": [0.5, 2.0, 0.0, 1.0], "entropy_decile": [0, 9, 3, 5], "cmi": [0.1, 0.0, 0.6, 0.3],
        "cmi_lo": [0.0, 0.0, 0.5, 0.1], "cmi_hi": [0.2, 0.0, 0.69, 0.4], "p_mean": [0.5, 0.0, 1.0, 0.25],
        "k": [4] * N, "m": [8] * N, "bound_holds": [True, True, False, True],
        "cmi_plugin": [0.12, 0.0, 0.65, 0.3], "estimator": ["jackknife"] * N, "high": [False, True, False, True],
    })


def steps_frame() -> pd.DataFrame:
    data: dict[str, list] = {}
    for name in CONTRACTS["steps"].schema.names:
        if name == "step":
            data[name] = list(range(N))
        elif name == "variant":
            data[name] = ["grpo"] * N
        elif name.startswith(("count_", "tokens")) and name != "tokens_per_s":
            data[name] = [10, 12, 8, 9]
        elif "share" in name:
            data[name] = [0.25, 0.5, 1.0, 0.0]
        else:
            data[name] = [0.5, 0.0, 1.0, 0.25]
    return pd.DataFrame(data)


def samples_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "model": ["grpo"] * N, "dataset": ["test"] * N, "prompt_id": ["p0", "p0", "p1", "p1"],
        "sample_idx": [-1, 0, -1, 0], "mode": ["greedy", "sample", "greedy", "sample"],
        "response": ["1", "2", "3", "4"], "answer": ["1"] * N, "extracted": ["1", "2", None, "4"],
        "extract_method": ["boxed", "last_number", "none", "answer_is"], "reward": [1.0, 0.0, 0.0, 0.0],
        "n_tokens": [3, 1, 8, 2], "entropy_mean": [0.5, 0.0, 2.0, 1.0], "finish_reason": ["eos", "length"] * 2,
        "reward_failure": [None] * N,
    })


FRAMES = {"prompts": prompts_frame, "rollouts": rollouts_frame, "tokens": tokens_frame, "cmi": cmi_frame,
          "steps": steps_frame, "samples": samples_frame}


def _set(col, value):
    def f(df):
        if value is None and df[col].dtype == bool:  # a bool column holds no null: make it nullable first
            df[col] = df[col].astype(object)
        df.at[BAD, col] = value
    return f


def _lists(**cols):
    """Replace list cells of row BAD (list columns need a Series assignment)."""
    def f(df):
        for col, value in cols.items():
            df[col] = [value if i == BAD else v for i, v in enumerate(df[col])]
    return f


def _copy_row(src: int, cols):
    def f(df):
        for c in cols:
            df.at[BAD, c] = df.at[src, c]
    return f


# (contract, expectation type, column(s) it is declared on, how to break row BAD)
NOT_NULL = "ExpectColumnValuesToNotBeNull"
CASES: list[tuple[str, str, tuple[str, ...], object]] = [
    *[("prompts", NOT_NULL, (c,), _set(c, None)) for c in ("id", "source", "prompt", "answer", "split", "difficulty")],
    ("prompts", "ExpectColumnValuesToBeUnique", ("id",), _set("id", "p1")),
    ("prompts", "ExpectColumnValueLengthsToBeBetween", ("prompt",), _set("prompt", "")),
    ("prompts", "ExpectColumnValueLengthsToBeBetween", ("answer",), _set("answer", "")),
    ("prompts", "ExpectColumnValuesToBeInSet", ("split",), _set("split", "validation")),

    *[("rollouts", NOT_NULL, (c,), _set(c, None))
      for c in ("prompt_id", "sample_idx", "response", "reward", "finish_reason", "n_tokens", "step")],
    ("rollouts", "ExpectCompoundColumnsToBeUnique", ("step", "prompt_id", "sample_idx"),
     _copy_row(0, ["prompt_id", "sample_idx"])),
    ("rollouts", "ExpectColumnValuesToBeInSet", ("reward",), _set("reward", 0.5)),
    ("rollouts", "ExpectColumnValuesToBeInSet", ("finish_reason",), _set("finish_reason", "stop")),
    ("rollouts", "ExpectColumnValuesToBeInSet", ("extract_method",), _set("extract_method", "regex")),
    ("rollouts", "ExpectColumnValuesToBeBetween", ("n_tokens",),
     lambda df: (_set("n_tokens", 0)(df), _lists(response_ids=[], logprobs=[], entropies=[], sum_p_sq=[])(df))),
    ("rollouts", "ExpectColumnValuesToBeBetween", ("n_prompt_ids",), _lists(prompt_ids=[])),
    ("rollouts", "ExpectColumnPairValuesToBeEqual", ("n_tokens", "n_response_ids"), _lists(response_ids=[8, 9])),
    ("rollouts", "ExpectColumnPairValuesToBeEqual", ("n_tokens", "n_logprobs"), _lists(logprobs=[-2.0, -0.3])),
    ("rollouts", "ExpectColumnPairValuesToBeEqual", ("n_tokens", "n_entropies"), _lists(entropies=[2.0])),
    ("rollouts", "ExpectColumnPairValuesToBeEqual", ("n_tokens", "n_sum_p_sq"),
     _lists(sum_p_sq=[0.1, 0.8, 0.9, 0.9])),
    ("rollouts", "ExpectColumnValuesToBeBetween", ("min_entropy",), _lists(entropies=[2.0, -0.01, 0.1])),
    ("rollouts", "ExpectColumnValuesToBeBetween", ("max_logprob",), _lists(logprobs=[-2.0, 0.01, -0.3])),
    ("rollouts", "ExpectColumnValuesToBeBetween", ("max_sum_p_sq",), _lists(sum_p_sq=[0.1, 1.01, 0.9])),

    *[("tokens", NOT_NULL, (c,), _set(c, None))
      for c in ("prompt_id", "sample_idx", "position", "token_id", "entropy", "logprob", "advantage", "quadrant",
                "grad_norm")],
    ("tokens", "ExpectCompoundColumnsToBeUnique", ("prompt_id", "sample_idx", "position"), _set("position", 1)),
    ("tokens", "ExpectColumnValuesToBeBetween", ("position",), _set("position", -1)),
    ("tokens", "ExpectColumnValuesToBeBetween", ("entropy",), _set("entropy", -0.01)),
    ("tokens", "ExpectColumnValuesToBeBetween", ("logprob",), _set("logprob", 0.01)),
    ("tokens", "ExpectColumnValuesToBeBetween", ("grad_norm",), _set("grad_norm", 1.42)),
    ("tokens", "ExpectColumnValuesToBeBetween", ("grad_norm",), _set("grad_norm", -0.01)),
    ("tokens", "ExpectColumnValuesToBeInSet", ("quadrant",), _set("quadrant", "pos_mid")),
    ("tokens", "ExpectColumnPairValuesToBeEqual", ("quadrant", "expected_quadrant"), _set("quadrant", "neg_high")),
    ("tokens", "ExpectColumnPairValuesToBeEqual", ("quadrant", "expected_quadrant"),
     lambda df: (_set("advantage", 0.0)(df))),  # A = 0 has no quadrant: "neg_low" is now wrong

    *[("cmi", NOT_NULL, (c,), _set(c, None))
      for c in ("prompt_id", "position", "entropy", "cmi", "cmi_lo", "cmi_hi", "k", "m", "cmi_plugin", "estimator",
                "high")],
    ("cmi", "ExpectCompoundColumnsToBeUnique", ("prompt_id", "sample_idx", "position"),
     _copy_row(3, ["position"])),
    # The bias-corrected `cmi` may leave [0, log 2] at one position; the plug-in value never does.
    ("cmi", "ExpectColumnValuesToBeBetween", ("cmi_plugin",), _set("cmi_plugin", 0.7)),  # > log 2
    ("cmi", "ExpectColumnValuesToBeBetween", ("cmi_plugin",), _set("cmi_plugin", -0.01)),
    ("cmi", "ExpectColumnValuesToBeInSet", ("estimator",), _set("estimator", "guess")),
    ("cmi", "ExpectColumnValuesToBeBetween", ("entropy",), _set("entropy", -0.01)),
    ("cmi", "ExpectColumnValuesToBeBetween", ("entropy_decile",), _set("entropy_decile", 10)),
    ("cmi", "ExpectColumnValuesToBeBetween", ("p_mean",), _set("p_mean", 1.01)),
    ("cmi", "ExpectColumnPairValuesAToBeGreaterThanB", ("cmi_hi", "cmi_lo"), _set("cmi_hi", 0.4)),
    ("cmi", "ExpectColumnValuesToBeBetween", ("k",), _set("k", 0)),
    ("cmi", "ExpectColumnValuesToBeBetween", ("m",), _set("m", 0)),

    *[("steps", NOT_NULL, (c,), _set(c, None)) for c in ("variant", "reward_mean", "loss", "grad_norm")],
    ("steps", NOT_NULL, ("step",), lambda df: df.__setitem__("step", [0, 1, None, 3])),
    ("steps", "ExpectColumnValuesToBeUnique", ("step",), _set("step", 1)),
    ("steps", "ExpectColumnValuesToBeIncreasing", ("step",), lambda df: df.__setitem__("step", [0, 2, 1, 3])),
    ("steps", "ExpectColumnValuesToBeBetween", ("reward_mean",), _set("reward_mean", 1.5)),
    ("steps", "ExpectColumnValuesToBeBetween", ("accuracy",), _set("accuracy", -0.5)),
    ("steps", "ExpectColumnValuesToBeBetween", ("clip_frac",), _set("clip_frac", 1.5)),
    ("steps", "ExpectColumnValuesToBeBetween", ("entropy_mean",), _set("entropy_mean", -0.5)),
    ("steps", "ExpectColumnValuesToBeBetween", ("grad_norm",), _set("grad_norm", -1.0)),
    ("steps", "ExpectColumnValuesToBeBetween", ("tokens",), _set("tokens", 0)),
    *[("steps", "ExpectColumnValuesToBeBetween", (f"grad_share_{q}",), _set(f"grad_share_{q}", 1.01))
      for q in ("pos_high", "pos_low", "neg_high", "neg_low")],

    *[("samples", NOT_NULL, (c,), _set(c, None))
      for c in ("model", "dataset", "prompt_id", "sample_idx", "mode", "reward", "n_tokens")],
    ("samples", "ExpectCompoundColumnsToBeUnique", ("dataset", "prompt_id", "sample_idx"),
     _copy_row(0, ["prompt_id", "sample_idx", "mode"])),
    ("samples", "ExpectColumnValuesToBeInSet", ("mode",), _set("mode", "beam")),
    ("samples", "ExpectColumnValuesToBeInSet", ("reward",), _set("reward", 0.5)),
    ("samples", "ExpectColumnValuesToBeInSet", ("finish_reason",), _set("finish_reason", "stop")),
    ("samples", "ExpectColumnValuesToBeBetween", ("n_tokens",), _set("n_tokens", 0)),
    ("samples", "ExpectColumnValuesToBeBetween", ("entropy_mean",), _set("entropy_mean", -0.01)),
]


def _lineage(contract: str):
    return make_lineage(contract, {}, extra={"tau": TAU} if contract == "tokens" else None)


@pytest.mark.parametrize("contract", sorted(FRAMES))
def test_the_valid_frame_is_accepted(tmp_path, contract):
    write_artifact(FRAMES[contract](), tmp_path / "ok.parquet", contract, _lineage(contract))
    assert (tmp_path / "ok.parquet").is_file()


@pytest.mark.parametrize(
    "contract,expectation,columns,breaks",
    CASES,
    ids=[f"{c[0]}-{_snake(c[1]).removeprefix('expect_')}-{'-'.join(c[2])}-{i}" for i, c in enumerate(CASES)],
)
def test_a_row_that_breaks_the_expectation_is_rejected(tmp_path, contract, expectation, columns, breaks):
    df = FRAMES[contract]()
    breaks(df)
    path = tmp_path / f"{contract}.parquet"
    with pytest.raises(ContractError) as err:
        write_artifact(df, path, contract, _lineage(contract))
    lines = str(err.value).splitlines()
    assert str(path) in lines[0] and f"'{contract}'" in lines[0]
    # The failure line of exactly this expectation: its type, its column(s), the broken row among the examples.
    mine = [ln for ln in lines[1:] if f"{_snake(expectation)} on column(s) [{', '.join(columns)}]" in ln]
    assert mine, f"no failure of {expectation} on {columns} in:\n{err.value}"
    rows = re.search(r"example rows \[([^\]]*)\]", mine[0]).group(1)
    assert str(BAD) in [r.strip() for r in rows.split(",")], mine[0]
    assert list(tmp_path.iterdir()) == []  # neither the artifact nor its temp file


def _declared_columns(e: Expect) -> tuple[str, ...]:
    kw = e.kwargs
    return tuple(kw[k] for k in ("column", "column_A", "column_B") if k in kw) + tuple(kw.get("column_list", ()))


def test_every_expectation_of_every_contract_has_a_rejection_case():
    covered = {(c, e, cols) for c, e, cols, _ in CASES}
    missing = [(name, e.type, _declared_columns(e)) for name, contract in CONTRACTS.items()
               for e in contract.expectations if (name, e.type, _declared_columns(e)) not in covered]
    assert not missing, f"expectations without a rejection case: {missing}"
    assert set(FRAMES) == set(CONTRACTS)
