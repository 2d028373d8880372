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
    # The code is a content hash of what the stage imports, not a git commit; no creation time in the artifact.
    assert len(back.code["sha256"]) == 64 and back.code["files"] > 5
    assert "git_commit" not in back.code and back.created_at == ""


def test_same_data_same_bytes(tmp_path, monkeypatch):
    """An artifact's bytes depend on its data, params, inputs and code only: not on the time or the git commit."""
    import time

    write_artifact(prompts_frame(), tmp_path / "a.parquet", "prompts", make_lineage("prepare", {"p": 1}, seed=0))
    time.sleep(1.1)
    monkeypatch.chdir(tmp_path)  # another working directory (no git checkout) changes nothing either
    write_artifact(prompts_frame(), tmp_path / "b.parquet", "prompts", make_lineage("prepare", {"p": 1}, seed=0))
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def rollouts_frame(n=3):
    return pd.DataFrame({
        "prompt_id": [f"p{i}" for i in range(n)], "sample_idx": [0] * n, "prompt": ["q"] * n, "answer": ["1"] * n,
        "response": ["1"] * n, "prompt_ids": [[1, 2]] * n, "response_ids": [[3, 4]] * n,
        "logprobs": [[-0.1, -0.2]] * n, "entropies": [[0.5, 0.1]] * n, "sum_p_sq": [[0.9, 0.8]] * n,
        "n_tokens": [2] * n, "reward": [1.0, 0.0, 1.0][:n], "extracted": ["1"] * n,
        "extract_method": ["last_number"] * n,
        "finish_reason": ["eos"] * n, "reward_failure": [None] * n, "step": [0] * n,
    })


def test_list_columns_hash_survives_the_parquet_round_trip(tmp_path):
    """Reading Parquet back names list fields `element`, not `item`: the data hash must not change (issue 11)."""
    path = tmp_path / "rollouts.parquet"
    written = write_artifact(rollouts_frame(), path, "rollouts", make_lineage("rollout", {}))
    table = pq.read_table(path)
    assert table.schema.field("logprobs").type.value_field.name == "element"  # the round trip renames it
    assert data_sha256(table) == written.data_sha256
    report = validate_file(path)
    assert report.success, report.render(path)


def test_tampered_data_with_old_footer_fails_naming_file_and_both_hashes(tmp_path):
    import pyarrow as pa

    path = tmp_path / "rollouts.parquet"
    written = write_artifact(rollouts_frame(), path, "rollouts", make_lineage("rollout", {}))
    table = pq.read_table(path)
    rewards = table["reward"].to_pylist()
    rewards[1] = 1.0  # one reward flipped, still a valid value; the footer (and its hash) kept
    tampered = table.set_column(table.schema.get_field_index("reward"), "reward", pa.array(rewards, pa.float32()))
    pq.write_table(tampered.replace_schema_metadata(table.schema.metadata), path)
    with pytest.raises(ContractError) as err:
        read_artifact(path, "rollouts")
    msg = str(err.value)
    assert str(path) in msg and written.data_sha256 in msg and data_sha256(tampered) in msg
    report = validate_file(path)
    assert not report.success and written.data_sha256 in report.render(path)


def test_lineage_records_the_hash_of_the_data_actually_read(tmp_path):
    a = tmp_path / "a.parquet"
    first = write_artifact(prompts_frame(), a, "prompts", make_lineage("prepare", {}))
    read_artifact(a, "prompts")  # the stage reads version 1 ...
    second = write_artifact(prompts_frame(3), a, "prompts", make_lineage("prepare", {}))  # ... a then changes
    assert first.data_sha256 != second.data_sha256
    lin = make_lineage("derived", {}, inputs={"src": a})
    assert lin.inputs["src"]["data_sha256"] == first.data_sha256


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
