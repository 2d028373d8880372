import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from eapo.contracts import ContractError, data_sha256, read_artifact, validate_file, write_artifact
from eapo.lineage import lineage_tree, make_lineage, read_lineage


def prompts_frame(n=4):
    return pd.DataFrame({
        "id": [f"synthetic-{i}" for i in range(n)], "source": ["synthetic"] * n,
        "prompt": [f"What is {i} + 1?" for i in range(n)], "answer": [str(i + 1) for i in range(n)],
        "split": ["train"] * n, "difficulty": ["add-1"] * n, "family": ["add"] * n, "meta": ["{}"] * n,
    })


def test_valid_prompts_round_trip_with_lineage(tmp_path):
    lin = make_lineage("prepare", {"prepare": {"seed": 3}}, seed=3, extra={"note": "x"})
    path = tmp_path / "p.parquet"
    written = write_artifact(prompts_frame(), path, "prompts", lin)
    table, back = read_artifact(path, "prompts")
    assert table.num_rows == 4
    assert back.stage == "prepare" and back.seed == 3 and back.params == {"prepare": {"seed": 3}}
    assert back.params_hash == lin.params_hash and len(back.params_hash) == 16
    assert back.artifact == "prompts" and back.schema_version == 1
    assert back.data_sha256 == written.data_sha256 == data_sha256(table)
    assert {"torch", "pyarrow", "great_expectations"} <= set(back.libraries)
    assert "git_commit" in back.code and "git_dirty" in back.code
    assert back.created_at


@pytest.mark.parametrize("column,value,expectation", [
    ("split", "validation", "expect_column_values_to_be_in_set"),
    ("answer", "", "expect_column_value_lengths_to_be_between"),
    ("id", "synthetic-0", "expect_column_values_to_be_unique"),
])
def test_bad_rows_rejected_and_nothing_left_behind(tmp_path, column, value, expectation):
    df = prompts_frame()
    df.loc[2, column] = value
    path = tmp_path / "bad.parquet"
    with pytest.raises(ContractError) as err:
        write_artifact(df, path, "prompts", make_lineage("prepare", {}))
    msg = str(err.value)
    assert expectation in msg and column in msg and "2" in msg
    assert list(tmp_path.iterdir()) == []  # no partial or temp file


def test_missing_column_is_named(tmp_path):
    with pytest.raises(ContractError, match="column answer: missing column"):
        write_artifact(prompts_frame().drop(columns=["answer"]), tmp_path / "x.parquet", "prompts",
                       make_lineage("prepare", {}))


def test_validate_file_reports_corruption(tmp_path):
    path = tmp_path / "p.parquet"
    write_artifact(prompts_frame(), path, "prompts", make_lineage("prepare", {}))
    # Corrupt the data but keep the footer: the split value breaks the contract.
    table = pq.read_table(path)
    df = table.to_pandas()
    df.loc[0, "split"] = "oops"
    import pyarrow as pa
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(table.schema.metadata),
                   tmp_path / "corrupt.parquet")
    report = validate_file(tmp_path / "corrupt.parquet")
    assert not report.success and "split" in report.render()
    with pytest.raises(ContractError):
        read_artifact(tmp_path / "corrupt.parquet")
    (tmp_path / "garbage.parquet").write_bytes(b"not parquet")
    assert not validate_file(tmp_path / "garbage.parquet").success


def test_tokens_contract_rejects_inconsistent_quadrants(tmp_path):
    n = 6
    entropy = np.array([0.1, 2.0, 0.2, 3.0, 0.5, 1.0], dtype=np.float32)
    adv = np.array([1, 1, -1, -1, 0, 1], dtype=np.float32)
    good = ["pos_low", "pos_high", "neg_low", "neg_high", "none", "pos_high"]  # tau = 1.0
    df = pd.DataFrame({"prompt_id": ["p"] * n, "sample_idx": [0] * n, "position": range(n),
                       "token_id": range(n), "token_text": ["t"] * n, "entropy": entropy, "logprob": [-0.5] * n,
                       "advantage": adv, "reward": [1.0] * n, "quadrant": good, "grad_norm": [0.5] * n})
    lin = make_lineage("annotate", {}, extra={"tau": 1.0})
    write_artifact(df, tmp_path / "ok.parquet", "tokens", lin)
    bad = df.copy()
    bad.loc[1, "quadrant"] = "pos_low"  # high entropy labelled low
    with pytest.raises(ContractError, match="quadrant"):
        write_artifact(bad, tmp_path / "bad.parquet", "tokens", lin)
    assert not (tmp_path / "bad.parquet").exists()


def test_lineage_tree_walks_inputs_and_flags_stale(tmp_path):
    a = tmp_path / "a.parquet"
    write_artifact(prompts_frame(), a, "prompts", make_lineage("prepare", {}))
    b = tmp_path / "b.parquet"
    write_artifact(prompts_frame(2), b, "prompts", make_lineage("derived", {}, inputs={"src": a}))
    tree = lineage_tree(b)
    assert tree["inputs"]["src"]["lineage"]["stage"] == "prepare"
    assert tree["inputs"]["src"]["stale"] is False
    write_artifact(prompts_frame(3), a, "prompts", make_lineage("prepare", {}))  # regenerate with other data
    assert lineage_tree(b)["inputs"]["src"]["stale"] is True
    assert read_lineage(tmp_path / "missing.parquet") is None
