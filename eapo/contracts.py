"""Artifact contracts: one Arrow schema and one Great Expectations suite per Parquet artifact.

`write_artifact` casts to the schema, writes a temp file next to the target, validates what is on disk, then renames
it into place; a failed validation leaves no file behind and raises `ContractError` naming the expectation, the column
and example rows. `read_artifact` validates too, and checks the data against the hash in its lineage: a file whose data
was changed but whose footer was kept fails, naming the file and both hashes. Lineage rides in the Parquet footer (see
`eapo.lineage`).

GX handles list columns badly (DESIGN §8), so validation runs on a *scalar view* of the table: the scalar columns plus
derived columns such as list lengths. "token ids and log-probs have equal length" is then one pair expectation on two
integer columns.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from eapo.core.cmi import CMI_ESTIMATORS
from eapo.core.quadrants import NONE_NAME, QUADRANTS
from eapo.lineage import LINEAGE_KEY, Lineage, note_read, read_lineage
from eapo.stageio import atomic_file

log = logging.getLogger("eapo.contracts")

QUADRANT_LABELS = (*QUADRANTS, NONE_NAME)


class ContractError(ValueError):
    """An artifact does not meet its contract. The message is a readable report."""


@dataclass(frozen=True)
class Expect:
    """One GX expectation, by class name and kwargs (kept declarative so a report can print it)."""

    type: str
    kwargs: dict[str, Any]

    def build(self):
        import great_expectations as gx

        return getattr(gx.expectations, self.type)(**self.kwargs)


@dataclass(frozen=True)
class Contract:
    name: str
    version: int
    schema: pa.Schema
    expectations: tuple[Expect, ...]
    derive: Callable[[pa.Table, Lineage | None], dict[str, np.ndarray]] | None = None
    """Extra scalar columns for validation (list lengths, recomputed labels), from the table and its lineage."""
    doc: str = ""
    unique: tuple[str, ...] = field(default_factory=tuple)
    """Columns that together identify a row."""


# --------------------------------------------------------------------------------------------------------------------
# Helpers for derived columns
# --------------------------------------------------------------------------------------------------------------------


def list_lengths(table: pa.Table, column: str) -> np.ndarray:
    import pyarrow.compute as pc

    return pc.list_value_length(table[column]).to_numpy(zero_copy_only=False).astype(np.int64)


def list_reduce(table: pa.Table, column: str, ufunc: np.ufunc, empty: float) -> np.ndarray:
    """Row-wise reduction of a list column (min/max), `empty` for empty lists."""
    import pyarrow.compute as pc

    col = table[column].combine_chunks()
    values = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.float64)
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False).astype(np.int64)
    out = np.full(len(lengths), empty, dtype=np.float64)
    nonempty = lengths > 0
    if values.size:
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        out[nonempty] = ufunc.reduceat(values, starts[nonempty])
    return out


def expected_quadrant(entropy: np.ndarray, advantage: np.ndarray, tau: float) -> np.ndarray:
    """The quadrant label implied by entropy, advantage and tau (DESIGN §4): A = 0 has no quadrant."""
    high = entropy >= tau
    labels = np.where(advantage > 0, np.where(high, "pos_high", "pos_low"),
                      np.where(advantage < 0, np.where(high, "neg_high", "neg_low"), "none"))
    return labels.astype(object)


def _not_null(*cols: str) -> list[Expect]:
    return [Expect("ExpectColumnValuesToNotBeNull", {"column": c}) for c in cols]


def _between(col: str, lo=None, hi=None) -> Expect:
    return Expect("ExpectColumnValuesToBeBetween", {"column": col, "min_value": lo, "max_value": hi})


def _in_set(col: str, values) -> Expect:
    return Expect("ExpectColumnValuesToBeInSet", {"column": col, "value_set": list(values)})


def _equal(a: str, b: str) -> Expect:
    return Expect("ExpectColumnPairValuesToBeEqual", {"column_A": a, "column_B": b})


def _nonempty(col: str) -> Expect:
    return Expect("ExpectColumnValueLengthsToBeBetween", {"column": col, "min_value": 1})


# --------------------------------------------------------------------------------------------------------------------
# The contracts
# --------------------------------------------------------------------------------------------------------------------

CONTRACTS: dict[str, Contract] = {}


def register(contract: Contract) -> Contract:
    CONTRACTS[contract.name] = contract
    return contract


register(Contract(
    name="prompts",
    version=1,
    doc="One verifiable prompt per row (prompts_train / prompts_test).",
    schema=pa.schema([
        ("id", pa.string()), ("source", pa.string()), ("prompt", pa.string()), ("answer", pa.string()),
        ("split", pa.string()), ("difficulty", pa.string()), ("family", pa.string()), ("meta", pa.string()),
    ]),
    unique=("id",),
    expectations=(
        *_not_null("id", "source", "prompt", "answer", "split", "difficulty"),
        Expect("ExpectColumnValuesToBeUnique", {"column": "id"}),
        _nonempty("prompt"), _nonempty("answer"),
        _in_set("split", ["train", "test"]),
    ),
))


def _derive_rollouts(table: pa.Table, lineage: Lineage | None) -> dict[str, np.ndarray]:
    return {
        "n_response_ids": list_lengths(table, "response_ids"),
        "n_logprobs": list_lengths(table, "logprobs"),
        "n_entropies": list_lengths(table, "entropies"),
        "n_sum_p_sq": list_lengths(table, "sum_p_sq"),
        "n_prompt_ids": list_lengths(table, "prompt_ids"),
        "min_entropy": list_reduce(table, "entropies", np.minimum, 0.0),
        "max_logprob": list_reduce(table, "logprobs", np.maximum, 0.0),
        "max_sum_p_sq": list_reduce(table, "sum_p_sq", np.maximum, 0.0),
    }


register(Contract(
    name="rollouts",
    version=1,
    doc="G sampled responses per prompt, with the policy's per-token log-prob and entropy at temperature 1.",
    schema=pa.schema([
        ("prompt_id", pa.string()), ("sample_idx", pa.int32()), ("prompt", pa.string()), ("answer", pa.string()),
        ("response", pa.string()), ("prompt_ids", pa.list_(pa.int32())), ("response_ids", pa.list_(pa.int32())),
        ("logprobs", pa.list_(pa.float32())), ("entropies", pa.list_(pa.float32())),
        ("sum_p_sq", pa.list_(pa.float32())), ("n_tokens", pa.int32()), ("reward", pa.float32()),
        ("extracted", pa.string()), ("extract_method", pa.string()), ("finish_reason", pa.string()),
        ("reward_failure", pa.string()), ("step", pa.int32()),
    ]),
    unique=("step", "prompt_id", "sample_idx"),
    derive=_derive_rollouts,
    expectations=(
        *_not_null("prompt_id", "sample_idx", "response", "reward", "finish_reason", "n_tokens", "step"),
        Expect("ExpectCompoundColumnsToBeUnique", {"column_list": ["step", "prompt_id", "sample_idx"]}),
        _in_set("reward", [0.0, 1.0]),
        _in_set("finish_reason", ["eos", "length"]),
        _in_set("extract_method", ["boxed", "answer_is", "last_number", "none"]),
        _between("n_tokens", 1, None),
        _between("n_prompt_ids", 1, None),
        _equal("n_tokens", "n_response_ids"), _equal("n_tokens", "n_logprobs"),
        _equal("n_tokens", "n_entropies"), _equal("n_tokens", "n_sum_p_sq"),
        _between("min_entropy", -1e-4, None),
        _between("max_logprob", None, 1e-4),
        _between("max_sum_p_sq", None, 1.0 + 1e-4),
    ),
))


def _derive_tokens(table: pa.Table, lineage: Lineage | None) -> dict[str, np.ndarray]:
    tau = (lineage.extra.get("tau") if lineage else None)
    entropy = table["entropy"].to_numpy(zero_copy_only=False).astype(np.float64)
    advantage = table["advantage"].to_numpy(zero_copy_only=False).astype(np.float64)
    if tau is None:
        # No recorded threshold: the labels cannot be checked, so the check is made to fail loudly.
        return {"expected_quadrant": np.full(len(entropy), "<no tau in lineage>", dtype=object)}
    return {"expected_quadrant": expected_quadrant(entropy, advantage, float(tau))}


register(Contract(
    name="tokens",
    version=1,
    doc="One row per response token: entropy, log-prob, advantage, quadrant and the logit-gradient norm.",
    schema=pa.schema([
        ("prompt_id", pa.string()), ("sample_idx", pa.int32()), ("position", pa.int32()), ("token_id", pa.int32()),
        ("token_text", pa.string()), ("entropy", pa.float32()), ("logprob", pa.float32()),
        ("advantage", pa.float32()), ("reward", pa.float32()), ("quadrant", pa.string()),
        ("grad_norm", pa.float32()),
    ]),
    unique=("prompt_id", "sample_idx", "position"),
    derive=_derive_tokens,
    expectations=(
        *_not_null("prompt_id", "sample_idx", "position", "token_id", "entropy", "logprob", "advantage",
                   "quadrant", "grad_norm"),
        Expect("ExpectCompoundColumnsToBeUnique", {"column_list": ["prompt_id", "sample_idx", "position"]}),
        _between("position", 0, None),
        _between("entropy", -1e-4, None),
        _between("logprob", None, 1e-4),
        _between("grad_norm", 0.0, 1.4143),
        _in_set("quadrant", QUADRANT_LABELS),
        _equal("quadrant", "expected_quadrant"),
    ),
))

register(Contract(
    name="cmi",
    version=2,
    doc=("Monte-Carlo CMI probe: one row per probed position. `cmi` is the `estimator`'s value (by default the "
         "bias-corrected jackknife, which may read below 0 or above log 2 at one position: eapo.core.cmi), with a "
         "bootstrap interval of that estimator; `cmi_plugin` is the plug-in value, always in [0, log 2]."),
    schema=pa.schema([
        ("prompt_id", pa.string()), ("sample_idx", pa.int32()), ("position", pa.int32()),
        ("entropy", pa.float32()), ("entropy_decile", pa.int32()), ("cmi", pa.float32()),
        ("cmi_lo", pa.float32()), ("cmi_hi", pa.float32()), ("p_mean", pa.float32()), ("k", pa.int32()),
        ("m", pa.int32()), ("bound_holds", pa.bool_()), ("cmi_plugin", pa.float32()), ("estimator", pa.string()),
        ("high", pa.bool_()),
    ]),
    unique=("prompt_id", "sample_idx", "position"),
    expectations=(
        *_not_null("prompt_id", "position", "entropy", "cmi", "cmi_lo", "cmi_hi", "k", "m", "cmi_plugin",
                   "estimator", "high"),
        Expect("ExpectCompoundColumnsToBeUnique", {"column_list": ["prompt_id", "sample_idx", "position"]}),
        _between("cmi_plugin", -1e-6, float(np.log(2)) + 1e-6),
        _in_set("estimator", sorted(CMI_ESTIMATORS)),
        _between("entropy", -1e-4, None),
        _between("entropy_decile", 0, 9),
        _between("p_mean", 0.0, 1.0),
        Expect("ExpectColumnPairValuesAToBeGreaterThanB", {"column_A": "cmi_hi", "column_B": "cmi_lo",
                                                           "or_equal": True}),
        _between("k", 1, None), _between("m", 1, None),
    ),
))

#: The steps table's columns, in order: the owner (eapo.trainer.StepRow lays its rows out in this order). Wall-time
#: measurements are not here: they go to the stage's run record, so identical training gives identical bytes.
STEP_COLUMNS = [
    ("step", pa.int32()), ("variant", pa.string()), ("reward_mean", pa.float32()), ("accuracy", pa.float32()),
    ("entropy_mean", pa.float32()), ("response_length", pa.float32()), ("loss", pa.float32()),
    ("clip_frac", pa.float32()), ("approx_kl", pa.float32()), ("grad_norm", pa.float32()), ("lr", pa.float32()),
    ("tau", pa.float32()), ("tokens", pa.int32()), ("mixed_groups", pa.float32()),
    *[(f"count_{q}", pa.int32()) for q in QUADRANTS],
    *[(f"grad_share_{q}", pa.float32()) for q in QUADRANTS],
    *[(f"weighted_grad_share_{q}", pa.float32()) for q in QUADRANTS],
]

register(Contract(
    name="steps",
    version=2,
    doc="One row per training step of one variant.",
    schema=pa.schema(STEP_COLUMNS),
    unique=("step",),
    expectations=(
        *_not_null("step", "variant", "reward_mean", "loss", "grad_norm"),
        Expect("ExpectColumnValuesToBeUnique", {"column": "step"}),
        Expect("ExpectColumnValuesToBeIncreasing", {"column": "step", "strictly": True}),
        _between("reward_mean", 0.0, 1.0), _between("accuracy", 0.0, 1.0),
        _between("clip_frac", 0.0, 1.0), _between("entropy_mean", 0.0, None),
        _between("grad_norm", 0.0, None), _between("tokens", 1, None),
        *[_between(f"grad_share_{q}", 0.0, 1.0 + 1e-5) for q in QUADRANTS],
    ),
))

register(Contract(
    name="samples",
    version=1,
    doc="Evaluation samples: one row per (dataset, prompt, sample); sample_idx -1 is the greedy decode.",
    schema=pa.schema([
        ("model", pa.string()), ("dataset", pa.string()), ("prompt_id", pa.string()), ("sample_idx", pa.int32()),
        ("mode", pa.string()), ("response", pa.string()), ("answer", pa.string()), ("extracted", pa.string()),
        ("extract_method", pa.string()), ("reward", pa.float32()), ("n_tokens", pa.int32()),
        ("entropy_mean", pa.float32()), ("finish_reason", pa.string()), ("reward_failure", pa.string()),
    ]),
    unique=("dataset", "prompt_id", "sample_idx"),
    expectations=(
        *_not_null("model", "dataset", "prompt_id", "sample_idx", "mode", "reward", "n_tokens"),
        Expect("ExpectCompoundColumnsToBeUnique", {"column_list": ["dataset", "prompt_id", "sample_idx"]}),
        _in_set("mode", ["greedy", "sample"]),
        _in_set("reward", [0.0, 1.0]),
        _in_set("finish_reason", ["eos", "length"]),
        _between("n_tokens", 1, None),
        _between("entropy_mean", -1e-4, None),
    ),
))


# --------------------------------------------------------------------------------------------------------------------
# Validation with an ephemeral GX context
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class ValidationReport:
    contract: str
    success: bool
    failures: list[dict[str, Any]] = field(default_factory=list)
    rows: int = 0

    def render(self, path: str | Path | None = None) -> str:
        where = f"{path}: " if path else ""
        if self.success:
            return f"{where}valid '{self.contract}' artifact ({self.rows} rows)"
        lines = [f"{where}INVALID '{self.contract}' artifact ({self.rows} rows): "
                 f"{len(self.failures)} expectation(s) failed"]
        for f in self.failures:
            cols = ", ".join(f["columns"]) or "-"
            lines.append(f"  - {f['expectation']} on column(s) [{cols}]: {f['unexpected_count']} unexpected row(s); "
                         f"example rows {f['example_rows']} values {f['example_values']}")
        return "\n".join(lines)


_GX: dict[str, Any] = {}


def _gx_context():
    if "ctx" not in _GX:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        for name in ("great_expectations", "great_expectations.core", "great_expectations.expectations"):
            logging.getLogger(name).setLevel(logging.ERROR)
        ctx = gx.get_context(mode="ephemeral")
        ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        _GX["ctx"] = ctx
        _GX["source"] = ctx.data_sources.add_pandas("eapo_artifacts")
        _GX["defs"] = {}
    return _GX["ctx"]


def _validation_definition(contract: Contract):
    ctx = _gx_context()
    defs = _GX["defs"]
    if contract.name not in defs:
        import great_expectations as gx

        asset = _GX["source"].add_dataframe_asset(contract.name)
        batch = asset.add_batch_definition_whole_dataframe("whole")
        suite = ctx.suites.add(gx.ExpectationSuite(name=f"{contract.name}_v{contract.version}",
                                                   expectations=[e.build() for e in contract.expectations]))
        defs[contract.name] = ctx.validation_definitions.add(
            gx.ValidationDefinition(name=f"validate_{contract.name}", data=batch, suite=suite))
    return defs[contract.name]


def scalar_view(table: pa.Table, contract: Contract, lineage: Lineage | None) -> pd.DataFrame:
    """Scalar columns of the table plus the contract's derived columns: what GX validates."""
    scalar = [f.name for f in table.schema if not pa.types.is_list(f.type) and not pa.types.is_large_list(f.type)]
    frame = table.select(scalar).to_pandas(types_mapper=None)
    for col in frame.columns:  # GX's pandas checks want plain object strings, not pandas' string dtype
        if pd.api.types.is_string_dtype(frame[col]) and not pd.api.types.is_object_dtype(frame[col]):
            frame[col] = frame[col].astype(object)
    if contract.derive is not None:
        for name, values in contract.derive(table, lineage).items():
            frame[name] = values
    return frame


def validate_table(table: pa.Table, contract: Contract | str, lineage: Lineage | None = None) -> ValidationReport:
    contract = CONTRACTS[contract] if isinstance(contract, str) else contract
    schema_problems = _schema_problems(table.schema, contract.schema)
    if schema_problems:
        return ValidationReport(contract.name, False, [
            {"expectation": "schema", "columns": [c], "unexpected_count": table.num_rows,
             "example_rows": [], "example_values": [msg]} for c, msg in schema_problems], table.num_rows)
    if table.num_rows == 0:
        return ValidationReport(contract.name, False, [
            {"expectation": "expect_table_row_count_to_be_between", "columns": [], "unexpected_count": 0,
             "example_rows": [], "example_values": ["the artifact has zero rows"]}], 0)
    frame = scalar_view(table, contract, lineage)
    result = _validation_definition(contract).run(
        batch_parameters={"dataframe": frame},
        result_format={"result_format": "COMPLETE", "partial_unexpected_count": 5},
    )
    failures = []
    for r in result.results:
        if r.success:
            continue
        kw = r.expectation_config.kwargs
        columns = [kw[k] for k in ("column", "column_A", "column_B") if k in kw] + list(kw.get("column_list", []))
        res = r.result or {}
        rows = list(res.get("unexpected_index_list") or [])[:5]
        values = list(res.get("partial_unexpected_list") or [])[:5]
        if not values and r.exception_info and r.exception_info.get("raised_exception"):
            values = [r.exception_info.get("exception_message")]
        failures.append({"expectation": r.expectation_config.type, "columns": columns,
                         "unexpected_count": res.get("unexpected_count"), "example_rows": rows,
                         "example_values": [_plain(v) for v in values]})
    return ValidationReport(contract.name, not failures, failures, table.num_rows)


def _plain(v: Any) -> Any:
    if isinstance(v, tuple):
        return tuple(_plain(x) for x in v)
    if isinstance(v, np.generic):
        return v.item()
    return v


def _schema_problems(actual: pa.Schema, expected: pa.Schema) -> list[tuple[str, str]]:
    problems = []
    for f in expected:
        idx = actual.get_field_index(f.name)
        if idx < 0:
            problems.append((f.name, "missing column"))
        elif not actual.field(idx).type.equals(f.type):
            problems.append((f.name, f"type {actual.field(idx).type}, expected {f.type}"))
    for f in actual:
        if expected.get_field_index(f.name) < 0:
            problems.append((f.name, "unexpected column"))
    return problems


# --------------------------------------------------------------------------------------------------------------------
# Read / write
# --------------------------------------------------------------------------------------------------------------------


def _canonical_type(t: pa.DataType) -> pa.DataType:
    """The type with every list's child field named `item` and nullable: Parquet round trips rename it `element`."""
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return pa.list_(pa.field("item", _canonical_type(t.value_type)))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _canonical_type(f.type)) for f in t])
    return t


def data_sha256(table: pa.Table) -> str:
    """The canonical hash of the data alone: the Arrow IPC stream of the table in one chunk, without schema metadata,
    with list fields named `item` and every field nullable. Equal for a table and the table read back from Parquet."""
    schema = pa.schema([pa.field(f.name, _canonical_type(f.type)) for f in table.schema])
    table = table.replace_schema_metadata(None).cast(schema).combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table.combine_chunks())
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def to_table(data: pd.DataFrame | pa.Table | list[dict], contract: Contract) -> pa.Table:
    """Cast rows to the contract's schema; a column that does not fit is named in the error."""
    if isinstance(data, pa.Table):
        table = data
    elif isinstance(data, pd.DataFrame):
        table = pa.Table.from_pandas(data, preserve_index=False)
    else:
        table = pa.Table.from_pylist(list(data)) if data else contract.schema.empty_table()
    problems = [(c, m) for c, m in _schema_problems(table.schema, contract.schema) if m in ("missing column",
                                                                                           "unexpected column")]
    if problems:
        raise ContractError(f"'{contract.name}' rows do not match the schema: "
                            + "; ".join(f"column {c}: {m}" for c, m in problems))
    columns = []
    for f in contract.schema:
        try:
            columns.append(table[f.name].cast(f.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise ContractError(f"'{contract.name}' column {f.name}: cannot cast to {f.type}: {exc}") from exc
    return pa.Table.from_arrays(columns, schema=contract.schema)


def write_artifact(data: pd.DataFrame | pa.Table | list[dict], path: str | Path, contract: str,
                   lineage: Lineage) -> Lineage:
    """Validate and atomically write a Parquet artifact with its lineage in the footer. Returns the final lineage."""
    spec = CONTRACTS[contract]
    path = Path(path)
    table = to_table(data, spec)
    lin = Lineage(**{**asdict(lineage), "artifact": spec.name, "schema_version": spec.version,
                     "data_sha256": data_sha256(table)})
    table = table.replace_schema_metadata({LINEAGE_KEY: lin.to_json().encode()})
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
        on_disk = pq.read_table(tmp)
        report = validate_table(on_disk, spec, lin)
        if not report.success:
            raise ContractError(report.render(path))
        if data_sha256(on_disk) != lin.data_sha256:
            raise ContractError(f"{path}: the data read back differs from the data written (hash "
                                f"{data_sha256(on_disk)} != {lin.data_sha256})")
    return lin


def check_hash(path: str | Path, table: pa.Table, lineage: Lineage | None) -> str:
    """The table's canonical data hash; a ContractError naming the file and both hashes when it differs from the hash
    its lineage recorded (the data was changed after it was written)."""
    actual = data_sha256(table)
    if lineage is not None and lineage.data_sha256 and actual != lineage.data_sha256:
        raise ContractError(f"{path}: data differs from the hash in its lineage: the data hashes to {actual}, the "
                            f"lineage records {lineage.data_sha256} (changed after it was written? rerun the stage "
                            f"that writes it: `dvc repro -f`)")
    return actual


def read_artifact(path: str | Path, contract: str | None = None, validate: bool = True,
                  verify_hash: bool = True) -> tuple[pa.Table, Lineage]:
    """Read a Parquet artifact and its lineage; check its data against the hash in the lineage and validate it against
    its contract (taken from the footer). The verified hash is noted, so the lineage of what the stage writes records
    the hash of the data it actually read."""
    path = Path(path)
    if not path.is_file():
        raise ContractError(f"{path}: no such artifact (run the stage that writes it: `dvc repro`)")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ContractError(f"{path}: not a readable Parquet file: {exc}") from exc
    lineage = read_lineage(path)
    name = contract or (lineage.artifact if lineage else None)
    if name is None:
        raise ContractError(f"{path}: no eapo lineage in the footer, so its contract is unknown")
    if name not in CONTRACTS:
        raise ContractError(f"{path}: unknown contract {name!r} (known: {', '.join(CONTRACTS)})")
    if contract and lineage and lineage.artifact and lineage.artifact != contract:
        raise ContractError(f"{path}: is a '{lineage.artifact}' artifact, expected '{contract}'")
    actual = check_hash(path, table, lineage) if verify_hash else data_sha256(table)
    if validate:
        report = validate_table(table, CONTRACTS[name], lineage)
        if not report.success:
            raise ContractError(report.render(path))
    note_read(path, actual, name)
    return table, lineage


def validate_file(path: str | Path) -> ValidationReport:
    """For `eapo validate`: a report rather than an exception."""
    path = Path(path)
    try:
        table, lineage = read_artifact(path, validate=False, verify_hash=False)
    except ContractError as exc:
        return ValidationReport("?", False, [{"expectation": "readable", "columns": [], "unexpected_count": None,
                                              "example_rows": [], "example_values": [str(exc)]}])
    report = validate_table(table, CONTRACTS[lineage.artifact], lineage)
    try:
        check_hash(path, table, lineage)
    except ContractError as exc:
        report.success = False
        report.failures.append({"expectation": "data hash", "columns": [], "unexpected_count": None,
                                "example_rows": [], "example_values": [str(exc)]})
    return report
