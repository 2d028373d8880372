"""The contracts' pure helpers, without Great Expectations (issue 16): derived columns, labels, schema checks, the
canonical data hash and the cast to a contract's schema. Each case is a few rows, so the mutation run
(`make mutate`) can afford them for every mutant of these helpers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from eapo.contracts import (
    CONTRACTS,
    ContractError,
    _canonical_type,
    _derive_rollouts,
    _derive_tokens,
    _plain,
    _schema_problems,
    check_hash,
    data_sha256,
    expected_quadrant,
    list_lengths,
    list_reduce,
    scalar_view,
    to_table,
)
from eapo.lineage import Lineage


def chunked(values: list, type_: pa.DataType) -> pa.ChunkedArray:
    """The values as a column of two chunks (first row alone), as a table concatenated from batches has."""
    return pa.chunked_array([pa.array(values[:1], type_), pa.array(values[1:], type_)])


def test_list_lengths_per_row_including_empty_lists():
    table = pa.table({"x": chunked([[1, 2], [], [3], [4, 5, 6]], pa.list_(pa.int32()))})
    out = list_lengths(table, "x")
    assert out.tolist() == [2, 0, 1, 3]
    assert out.dtype == np.int64


def test_list_reduce_min_and_max_per_row_with_the_empty_value_for_empty_lists():
    values = [[3.0, 1.0], [], [5.0, -2.0, 4.0], [7.5]]
    table = pa.table({"x": chunked(values, pa.list_(pa.float32()))})
    assert list_reduce(table, "x", np.minimum, -9.0).tolist() == [1.0, -9.0, -2.0, 7.5]
    assert list_reduce(table, "x", np.maximum, 9.0).tolist() == [3.0, 9.0, 5.0, 7.5]
    # Empty lists first and last: the row starts must skip them.
    first_empty = pa.table({"x": chunked([[], [2.0, 8.0], []], pa.list_(pa.float32()))})
    assert list_reduce(first_empty, "x", np.maximum, 0.5).tolist() == [0.5, 8.0, 0.5]
    all_empty = pa.table({"x": pa.array([[], []], pa.list_(pa.float32()))})
    assert list_reduce(all_empty, "x", np.minimum, 0.0).tolist() == [0.0, 0.0]
    # float32 log-probs are compared in float64: 1e-4 above 0 must not be rounded away.
    assert list_reduce(pa.table({"x": [[-1.0, 2.5e-4]]}), "x", np.maximum, 0.0).dtype == np.float64


def test_expected_quadrant_ties_at_tau_are_high_and_zero_advantage_has_none():
    h = np.array([0.5, 0.5, 0.49, 0.49, 0.5, 0.0, 2.0])
    a = np.array([1.0, -1.0, 1.0, -1.0, 0.0, 0.0, 1e-9])
    out = expected_quadrant(h, a, 0.5)
    assert out.tolist() == ["pos_high", "neg_high", "pos_low", "neg_low", "none", "none", "pos_high"]
    assert out.dtype == object


def rollouts_table() -> pa.Table:
    return pa.table({
        "response_ids": [[1, 2, 3], [4]],
        "logprobs": pa.array([[-0.5, -1.0, -2.0], [-0.25]], pa.list_(pa.float32())),
        "entropies": pa.array([[0.75, 0.5, 1.5], [2.0]], pa.list_(pa.float32())),
        "sum_p_sq": pa.array([[0.5, 0.25, 0.75], [0.125]], pa.list_(pa.float32())),
        "prompt_ids": [[9, 9], [9, 9, 9, 9, 9]],
    })


def test_derive_rollouts_columns():
    d = _derive_rollouts(rollouts_table(), None)
    assert {k: v.tolist() for k, v in d.items()} == {
        "n_response_ids": [3, 1], "n_logprobs": [3, 1], "n_entropies": [3, 1], "n_sum_p_sq": [3, 1],
        "n_prompt_ids": [2, 5], "min_entropy": [0.5, 2.0], "max_logprob": [-0.5, -0.25],
        "max_sum_p_sq": [0.75, 0.125],
    }


def test_derive_rollouts_reads_each_list_column_separately():
    t = rollouts_table()
    t = t.set_column(t.schema.get_field_index("sum_p_sq"), "sum_p_sq",
                     pa.array([[0.5, 0.25], [0.125, 0.5, 0.5]], pa.list_(pa.float32())))
    d = _derive_rollouts(t, None)
    assert d["n_sum_p_sq"].tolist() == [2, 3] and d["n_entropies"].tolist() == [3, 1]
    assert d["max_sum_p_sq"].tolist() == [0.5, 0.5]
    # Empty lists reduce to 0.0 (then n_tokens >= 1 rejects the row).
    empty = pa.table({c: pa.array([[]], t.schema.field(c).type) for c in t.column_names})
    e = _derive_rollouts(empty, None)
    assert e["min_entropy"].tolist() == [0.0] and e["max_logprob"].tolist() == [0.0]
    assert e["max_sum_p_sq"].tolist() == [0.0]


def test_derive_tokens_uses_the_lineage_tau_and_fails_loudly_without_it():
    t = pa.table({"entropy": pa.array([1.0, 0.25, 1.0], pa.float32()),
                  "advantage": pa.array([0.5, 0.5, -0.5], pa.float32())})
    lin = Lineage(stage="annotate", params={}, extra={"tau": 1.0})
    assert _derive_tokens(t, lin)["expected_quadrant"].tolist() == ["pos_high", "pos_low", "neg_high"]
    lin_low = Lineage(stage="annotate", params={}, extra={"tau": 0.25})
    assert _derive_tokens(t, lin_low)["expected_quadrant"].tolist() == ["pos_high", "pos_high", "neg_high"]
    for lineage in (None, Lineage(stage="annotate", params={})):
        out = _derive_tokens(t, lineage)["expected_quadrant"]
        assert out.tolist() == ["<no tau in lineage>"] * 3


def test_schema_problems_name_missing_mistyped_and_unexpected_columns():
    expected = pa.schema([("a", pa.int32()), ("b", pa.string()), ("c", pa.float32())])
    actual = pa.schema([("a", pa.int32()), ("c", pa.float64()), ("z", pa.string())])
    assert _schema_problems(actual, expected) == [
        ("b", "missing column"), ("c", "type double, expected float"), ("z", "unexpected column")]
    assert _schema_problems(expected, expected) == []
    # The first column counts too (index 0 is a found column).
    assert _schema_problems(pa.schema([("a", pa.int64())]), pa.schema([("a", pa.int32())])) == [
        ("a", "type int64, expected int32")]


def test_canonical_type_names_list_items_item_at_every_depth():
    el = pa.list_(pa.field("element", pa.list_(pa.field("element", pa.float32(), nullable=False))))
    assert _canonical_type(el) == pa.list_(pa.list_(pa.float32()))
    assert _canonical_type(el).value_field.name == "item"
    assert _canonical_type(pa.large_list(pa.int32())) == pa.list_(pa.int32())
    assert _canonical_type(pa.list_(pa.int8(), 2)) == pa.list_(pa.int8())
    st = pa.struct([pa.field("xs", pa.list_(pa.field("element", pa.int32()))), pa.field("n", pa.int64())])
    assert _canonical_type(st) == pa.struct([pa.field("xs", pa.list_(pa.int32())), pa.field("n", pa.int64())])
    assert _canonical_type(pa.string()) == pa.string()


def test_data_sha256_survives_parquet_chunks_and_metadata_and_sees_any_change(tmp_path):
    t = pa.table({"a": pa.array([1, 2, 3], pa.int32()),
                  "xs": pa.array([[1.0], [], [2.0, 3.0]], pa.list_(pa.float32()))})
    h = data_sha256(t)
    assert len(h) == 64 and int(h, 16) >= 0
    pq.write_table(t.replace_schema_metadata({"k": "v"}), tmp_path / "t.parquet")
    back = pq.read_table(tmp_path / "t.parquet")
    assert back.schema.field("xs").type.value_field.name == "element"
    assert data_sha256(back) == h
    assert data_sha256(pa.concat_tables([t.slice(0, 1), t.slice(1)])) == h
    changed = pa.table({"a": pa.array([1, 2, 4], pa.int32()), "xs": t["xs"]})
    assert data_sha256(changed) != h
    assert data_sha256(t.rename_columns(["b", "xs"])) != h


def test_check_hash_names_the_file_and_both_hashes(tmp_path):
    t = pa.table({"a": [1, 2]})
    h = data_sha256(t)
    assert check_hash("f.parquet", t, None) == h
    assert check_hash("f.parquet", t, Lineage(stage="s", params={})) == h
    assert check_hash("f.parquet", t, Lineage(stage="s", params={}, data_sha256=h)) == h
    with pytest.raises(ContractError) as exc:
        check_hash("dir/f.parquet", t, Lineage(stage="s", params={}, data_sha256="0" * 64))
    msg = str(exc.value)
    assert "dir/f.parquet" in msg and h in msg and "0" * 64 in msg


def test_to_table_casts_to_the_contract_schema_from_rows_frames_and_tables():
    spec = CONTRACTS["steps"]
    row = {name: (0 if pa.types.is_integer(t) else "v" if pa.types.is_string(t) else 0.5)
           for name, t in zip(spec.schema.names, spec.schema.types)}
    for data in ([row], pd.DataFrame([row]), pa.Table.from_pylist([row])):
        t = to_table(data, spec)
        assert t.schema == spec.schema and t.num_rows == 1
        assert t["loss"].to_pylist() == [0.5] and t["step"].to_pylist() == [0]
    empty = to_table([], spec)
    assert empty.schema == spec.schema and empty.num_rows == 0


def test_to_table_errors_name_the_contract_and_the_column():
    spec = CONTRACTS["steps"]
    row = {name: 0 for name in spec.schema.names}
    with pytest.raises(ContractError, match=r"'steps' rows do not match the schema: column loss: missing column"):
        to_table([{k: v for k, v in row.items() if k != "loss"}], spec)
    with pytest.raises(ContractError, match=r"column extra: unexpected column"):
        to_table([{**row, "extra": 1}], spec)
    with pytest.raises(ContractError, match=r"'steps' column variant: cannot cast to string"):
        to_table(pa.table({**{k: [v] for k, v in row.items()}, "variant": [[1, 2]]}), spec)
    with pytest.raises(ContractError, match=r"'steps' column step: cannot cast to int32"):
        to_table(pa.table({**{k: [v] for k, v in row.items()}, "step": ["x"]}), spec)


def test_scalar_view_drops_list_columns_keeps_plain_strings_and_adds_derived_columns():
    spec = CONTRACTS["rollouts"]
    t = pa.table({"prompt_id": pa.array(["p", "q"], pa.string()), "n_tokens": pa.array([3, 1], pa.int32()),
                  **{c: rollouts_table()[c] for c in rollouts_table().column_names}})
    frame = scalar_view(t, spec, None)
    assert list(frame.columns[:2]) == ["prompt_id", "n_tokens"]
    assert "response_ids" not in frame.columns and "logprobs" not in frame.columns
    assert frame["prompt_id"].dtype == object and frame["prompt_id"].tolist() == ["p", "q"]
    assert frame["n_response_ids"].tolist() == [3, 1] and frame["n_prompt_ids"].tolist() == [2, 5]
    assert frame["n_tokens"].dtype == np.int32  # only string columns become object
    no_derive = scalar_view(t, CONTRACTS["samples"], None)
    assert list(no_derive.columns) == ["prompt_id", "n_tokens"]
    lt = pa.table({"a": pa.array([1], pa.int8()), "xs": pa.array([[1]], pa.large_list(pa.int8()))})
    assert list(scalar_view(lt, CONTRACTS["samples"], None).columns) == ["a"]
    st = pa.table({"s": pa.array(["x"], pa.large_string())})
    assert scalar_view(st, CONTRACTS["samples"], None)["s"].dtype == object


def test_scalar_view_derives_with_the_lineage_it_is_given():
    t = pa.table({"entropy": pa.array([1.0, 0.25], pa.float32()), "advantage": pa.array([0.5, -0.5], pa.float32()),
                  "quadrant": ["pos_high", "neg_low"]})
    lin = Lineage(stage="annotate", params={}, extra={"tau": 0.5})
    assert scalar_view(t, CONTRACTS["tokens"], lin)["expected_quadrant"].tolist() == ["pos_high", "neg_low"]
    assert set(scalar_view(t, CONTRACTS["tokens"], None)["expected_quadrant"]) == {"<no tau in lineage>"}


def test_plain_turns_numpy_scalars_and_tuples_of_them_into_python_values():
    out = _plain((np.int64(3), np.float32(0.5), ("a", np.bool_(True))))
    assert out == (3, 0.5, ("a", True))
    assert type(out[0]) is int and type(out[1]) is float and type(out[2][1]) is bool
    assert _plain(np.float64(2.0)) == 2.0 and type(_plain(np.float64(2.0))) is float
    assert _plain("s") == "s"
