"""Readers for prompt files: the GSM8K / MATH500 / AIME24 / AMC23 formats and generic JSONL / Parquet / CSV.

``read_records(path, kind, name=..., fields=..., limit=...)`` reads the whole file, checks every row and only then
returns; any problem raises :class:`DataError` whose message names the file, the 1-based line (JSONL, CSV) or row
(Parquet) and the field.

``fields`` maps our names (``prompt``, ``answer``, and optionally ``id``, ``difficulty``, ``family``) to the file's
column names. Generic kinds default to ``{"prompt": "prompt", "answer": "answer"}``; named kinds have their own
defaults, which ``fields`` overrides key by key. A column that ``fields`` names explicitly must exist in the file.

The format of a named kind's file comes from its extension (``.jsonl``/``.ndjson``/``.json`` = JSON Lines,
``.parquet``, ``.csv``); the generic kinds are their own format.

CSV is read as strictly as JSON Lines: a quote that never closes is an error naming the line where the quoted field
opened (quoted fields that legitimately span lines still read), and a row with fewer or more values than the header
is an error at its line. ``read_sources`` reads several files and checks that ids are unique across all of them,
naming both files and lines of a clash.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eapo.core.registry import Registry
from eapo.data.records import DataError, PromptRecord, dump_meta, make_id, normalize_prompt

__all__ = ["FIELD_NAMES", "IMPORTERS", "Importer", "read_records", "read_rows", "read_sources"]

FIELD_NAMES = ("prompt", "answer", "id", "difficulty", "family")
_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".csv": "csv"}
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

Row = tuple[int, dict[str, Any]]  # (1-based line or row number, the row's fields)


# --------------------------------------------------------------------------------------------------- raw rows


def _read_jsonl(path: Path) -> tuple[list[Row], str]:
    rows: list[Row] = []
    for lineno, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(
                f"not valid UTF-8 ({err.reason} at byte {err.start})", path=path, line=lineno
            ) from None
        if lineno == 1:
            text = text.removeprefix("\ufeff")
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(
                f"malformed JSON ({err.msg} at column {err.colno})", path=path, line=lineno
            ) from None
        if not isinstance(obj, dict):
            raise DataError(f"expected a JSON object, got {type(obj).__name__}", path=path, line=lineno)
        rows.append((lineno, obj))
    return rows, "line"


def _open_quote_line(lines: list[str], start: int) -> int:
    """The 1-based line where the last quoted field opened, scanning a record that starts at line ``start`` with the
    CSV quoting rules (a quote opens a field only at its start; ``""`` inside quotes is a literal quote)."""
    opened, in_quotes, at_field_start = start, False, True
    for lineno in range(start, len(lines) + 1):
        text = lines[lineno - 1]
        i = 0
        while i < len(text):
            ch = text[i]
            if in_quotes:
                if ch == '"':
                    if text[i + 1: i + 2] == '"':
                        i += 1
                    else:
                        in_quotes = False
            elif ch == '"' and at_field_start:
                in_quotes, opened = True, lineno
            at_field_start = not in_quotes and ch in ",\r\n"
            i += 1
        if not in_quotes and lineno > start:
            break
    return opened


def _read_csv(path: Path) -> tuple[list[Row], str]:
    """CSV with a header line, read strictly: a quote that never closes (or closes in the middle of a field) is an
    error naming the line where the quoted field opened, and a row with more or fewer values than the header is an
    error naming its line. Quoted fields may span lines."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise DataError(f"not valid UTF-8 ({err.reason} at byte {err.start})", path=path, line=line) from None
    rows: list[Row] = []
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    start = 1
    try:
        header = next(reader, None)
        if header is None:
            raise DataError("empty CSV file (no header line)", path=path, line=1)
        if len(set(header)) != len(header):
            dupes = sorted({h for h in header if header.count(h) > 1})
            raise DataError(f"header repeats column names {dupes}", path=path, line=1)
        while True:
            start = reader.line_num + 1
            values = next(reader, None)
            if values is None:
                break
            if not values:  # a blank line
                continue
            if len(values) != len(header):
                short = len(values) < len(header)
                raise DataError(
                    f"{'short row: ' if short else ''}{len(values)} value{'s' if len(values) != 1 else ''} but "
                    f"the header has {len(header)} columns",
                    path=path,
                    line=start,
                )
            rows.append((start, dict(zip(header, values))))
    except csv.Error as err:
        lines = re.findall(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$", text)  # the line breaks the csv reader counts
        opened = _open_quote_line(lines, start)
        raise DataError(
            f"unterminated quote: the quoted field opened on this line does not close properly ({err})",
            path=path,
            line=opened,
        ) from None
    return rows, "line"


def _read_parquet(path: Path) -> tuple[list[Row], str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"not a readable Parquet file ({err})", path=path) from None
    return [(i, row) for i, row in enumerate(table.to_pylist(), start=1)], "row"


_READERS: dict[str, Callable[[Path], tuple[list[Row], str]]] = {
    "jsonl": _read_jsonl,
    "csv": _read_csv,
    "parquet": _read_parquet,
}


def read_rows(path: str | Path, fmt: str) -> tuple[list[Row], str]:
    """All rows of a file as ``(number, dict)``, and the unit of the numbers ("line" or "row")."""
    path = Path(path)
    if fmt not in _READERS:
        raise DataError(f"unknown file format {fmt!r}; known: {sorted(_READERS)}", path=path)
    if not path.exists():
        raise DataError("file not found", path=path)
    if not path.is_file():
        raise DataError("not a regular file", path=path)
    return _READERS[fmt](path)


# ------------------------------------------------------------------------------------------------ values


def _number_text(value: float) -> str:
    """27 → "27", 27.0 → "27", 0.5 → "0.5"; NaN/inf are not answers."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"not a finite number ({value!r})")
        if value.is_integer():
            return str(int(value))
        return repr(value)
    return str(value)


_INTEGRAL_FLOAT = re.compile(r"^([+-]?\d+)\.0+$")


def _answer_text(value: Any) -> str:
    """A scalar answer as stripped text; numbers (and "27.0"-style strings) lose a zero fraction."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"expected a string or number, got {value!r}")
    if isinstance(value, (int, float)):
        return _number_text(value)
    if isinstance(value, str):
        text = value.strip()
        m = _INTEGRAL_FLOAT.match(text)
        return m.group(1) if m else text
    raise ValueError(f"expected a string or number, got {type(value).__name__}")


def _gsm8k_answer(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    if "####" not in value:
        raise ValueError("GSM8K answer has no '####' before the final answer")
    return value.rsplit("####", 1)[1].strip().replace(",", "")


def _math_level(value: Any) -> str:
    """3 → "level-3", "Level 3" → "level-3"; other text is kept (lowercased, spaces to dashes)."""
    if isinstance(value, bool):
        raise TypeError(f"expected a level, got {value!r}")
    if isinstance(value, (int, float)):
        return f"level-{_number_text(value)}"
    text = str(value).strip()
    m = re.fullmatch(r"(?i)(?:level[\s_-]*)?(\d+)", text)
    if m:
        return f"level-{int(m.group(1))}"
    return re.sub(r"\s+", "-", text.lower())


def _plain_text(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        raise ValueError(f"expected text, got {value!r}")
    if isinstance(value, (int, float)):
        return _number_text(value)
    if isinstance(value, str):
        return value.strip()
    raise ValueError(f"expected text, got {type(value).__name__}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


# --------------------------------------------------------------------------------------------- importers


@dataclass(frozen=True)
class Importer:
    """How one kind of file becomes prompt records.

    ``fmt`` is the file format, or None to take it from the file's extension. ``fields`` is the default mapping from
    our names to the file's columns. ``answer`` / ``difficulty`` turn a raw value into our text. ``meta_columns`` are
    copied into ``meta`` when present.
    """

    fmt: str | None
    fields: Mapping[str, str]
    answer: Callable[[Any], str] = _answer_text
    difficulty: Callable[[Any], str] = _plain_text
    meta_columns: tuple[str, ...] = ()
    doc: str = field(default="", compare=False)


IMPORTERS: Registry[Importer] = Registry("source kind")
IMPORTERS.register("gsm8k")(Importer(
    None,
    {"prompt": "question", "answer": "answer"},
    answer=_gsm8k_answer,
    doc="GSM8K: question, answer (final answer after '####', thousands commas removed)",
))
IMPORTERS.register("math500")(Importer(
    None,
    {"prompt": "problem", "answer": "answer", "difficulty": "level", "family": "subject"},
    answer=_plain_text,
    difficulty=_math_level,
    meta_columns=("unique_id",),
    doc="MATH500: problem, answer (kept as given), level → 'level-N', subject → family, unique_id → meta",
))
IMPORTERS.register("aime24")(Importer(
    None,
    {"prompt": "problem", "answer": "answer"},
    answer=_plain_text,
    meta_columns=("id", "url"),
    doc="AIME 2024: problem, answer (kept as given, e.g. '025'); id, url → meta",
))
IMPORTERS.register("amc23")(Importer(
    None,
    {"prompt": "problem", "answer": "answer"},
    meta_columns=("id", "url"),
    doc="AMC 2023: problem, answer (a float: 27.0 → '27'); id, url → meta",
))
IMPORTERS.register("jsonl")(Importer("jsonl", {"prompt": "prompt", "answer": "answer"}, doc="generic JSON Lines"))
IMPORTERS.register("parquet")(Importer("parquet", {"prompt": "prompt", "answer": "answer"}, doc="generic Parquet"))
IMPORTERS.register("csv")(Importer("csv", {"prompt": "prompt", "answer": "answer"}, doc="generic CSV (header line)"))


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _is_blank(value: Any) -> bool:
    return _is_missing(value) or (isinstance(value, str) and not value.strip())


@dataclass(frozen=True)
class _Cells:
    """One row's values, fetched and converted with errors that name the file, line/row and column."""

    path: Path
    number: int
    unit: str
    row: Mapping[str, Any]
    mapping: Mapping[str, str]

    def fail(self, column: str, problem: str) -> DataError:
        return DataError(problem, path=self.path, line=self.number, field=column, unit=self.unit)

    def required(self, key: str, convert: Callable[[Any], str]) -> str:
        column = self.mapping[key]
        if column not in self.row:
            raise self.fail(column, f"missing ({key})")
        value = self.row[column]
        if _is_blank(value):
            raise self.fail(column, f"empty ({key})")
        try:
            text = convert(value)
        except (TypeError, ValueError) as err:
            raise self.fail(column, f"bad {key}: {err}") from None
        if not text:
            raise self.fail(column, f"empty ({key}) after normalisation of {value!r}")
        return text

    def optional(self, key: str, convert: Callable[[Any], str]) -> str | None:
        column = self.mapping.get(key)
        if column is None or _is_blank(self.row.get(column)):
            return None
        try:
            return convert(self.row[column]) or None
        except (TypeError, ValueError) as err:
            raise self.fail(column, f"bad {key}: {err}") from None


def _resolve_fields(importer: Importer, fields: Mapping[str, str] | None, path: Path) -> dict[str, str]:
    mapping = dict(importer.fields)
    if fields is None:
        return mapping
    if not isinstance(fields, Mapping):
        raise DataError(
            f"fields must be a mapping of our names to column names, got {type(fields).__name__}", path=path
        )
    unknown = [key for key in fields if key not in FIELD_NAMES]
    if unknown:
        raise DataError(f"fields has unknown keys {unknown}; allowed: {list(FIELD_NAMES)}", path=path)
    for key, column in fields.items():
        if not isinstance(column, str) or not column:
            raise DataError(f"fields[{key!r}] must be a non-empty column name, got {column!r}", path=path)
    mapping.update(fields)
    return mapping


def _source_name(kind: str, name: str | None, path: Path) -> str:
    if name is None:
        if kind in ("jsonl", "parquet", "csv"):
            name = path.name.split(".")[0]
        else:
            return kind
    if not isinstance(name, str) or not _NAME_OK.match(name):
        raise DataError(
            f"source name {name!r} must start with a letter or digit and use only letters, digits, '.', '_', '-'",
            path=path,
        )
    return name


def read_records(
    path: str | Path,
    kind: str,
    *,
    name: str | None = None,
    fields: Mapping[str, str] | None = None,
    limit: int | None = None,
) -> list[PromptRecord]:
    """Read and check a whole prompt file, then return its records (the first ``limit`` if given).

    ``kind``: one of :data:`IMPORTERS`. ``name``: the records' ``source`` (default: the kind for named kinds, the
    file's stem for generic ones). ``fields``: our name → the file's column (see the module doc).
    """
    return [record for record, _ in _read_located(path, kind, name=name, fields=fields, limit=limit)[0]]


def read_sources(sources: Sequence[Any]) -> list[list[PromptRecord]]:
    """Read several prompt files (each with ``path``, ``kind`` and optional ``name``, ``fields``, ``limit``
    attributes, as `prepare.sources` declares them) and return their records, one list per source.

    Ids must be unique across all of them: two records with one id but different prompts raise :class:`DataError`
    naming both files and their lines (rows). The same prompt under the same id is a duplicate that dedupe drops.
    """
    out: list[list[PromptRecord]] = []
    seen: dict[str, tuple[PromptRecord, Path, int, str]] = {}
    for src in sources:
        path = Path(src.path)
        located, unit = _read_located(path, src.kind, name=getattr(src, "name", None),
                                      fields=getattr(src, "fields", None), limit=getattr(src, "limit", None))
        for record, number in located:
            first = seen.setdefault(record.id, (record, path, number, unit))
            if first[0] is not record and normalize_prompt(first[0].prompt) != normalize_prompt(record.prompt):
                raise DataError(
                    f"duplicate id {record.id!r}: {first[1]} {first[3]} {first[2]} has the same id with another "
                    f"prompt",
                    path=path,
                    line=number,
                    field=(getattr(src, "fields", None) or {}).get("id"),
                    unit=unit,
                )
        out.append([record for record, _ in located])
    return out


def _read_located(
    path: str | Path,
    kind: str,
    *,
    name: str | None = None,
    fields: Mapping[str, str] | None = None,
    limit: int | None = None,
) -> tuple[list[tuple[PromptRecord, int]], str]:
    """`read_records`, with each record's 1-based line (or row) number, and the unit of those numbers."""
    path = Path(path)
    if kind not in IMPORTERS:
        raise DataError(f"unknown kind {kind!r}; known kinds: {sorted(IMPORTERS)}", path=path)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise DataError(f"limit must be an int >= 0 or None, got {limit!r}", path=path)
    importer = IMPORTERS[kind]
    mapping = _resolve_fields(importer, fields, path)
    source = _source_name(kind, name, path)

    fmt = importer.fmt
    if fmt is None:
        suffix = path.suffix.lower()
        if suffix not in _EXTENSIONS:
            raise DataError(
                f"cannot tell the format of a {kind!r} file from its extension {suffix!r}; "
                f"known extensions: {sorted(_EXTENSIONS)}",
                path=path,
            )
        fmt = _EXTENSIONS[suffix]
    rows, unit = read_rows(path, fmt)
    if not rows:
        raise DataError("no records in file", path=path)

    # A column that the caller named explicitly must exist somewhere in the file.
    columns: dict[str, None] = {}
    for _, row in rows:
        columns.update(dict.fromkeys(row))
    explicit = dict(fields or {})
    for key in ("prompt", "answer"):
        explicit.setdefault(key, mapping[key])  # prompt and answer are always required
    for key, column in explicit.items():
        if column not in columns:
            via = f"fields[{key!r}]" if fields and key in fields else f"the {kind!r} format's {key!r}"
            raise DataError(
                f"column does not exist in the file (named by {via}); columns: {list(columns)}",
                path=path,
                line=1 if fmt == "csv" else rows[0][0],  # CSV: the header line
                field=column,
                unit=unit,
            )

    records: list[tuple[PromptRecord, int]] = []
    for number, row in rows:
        cell = _Cells(path, number, unit, row, mapping)
        raw_prompt = row.get(mapping["prompt"])
        if raw_prompt is not None and not isinstance(raw_prompt, str):
            raise cell.fail(mapping["prompt"], f"prompt must be text, got {type(raw_prompt).__name__}")
        prompt = cell.required("prompt", str.strip)
        answer = cell.required("answer", importer.answer)
        record_id = cell.required("id", _plain_text) if "id" in mapping else make_id(source, prompt)
        difficulty = cell.optional("difficulty", importer.difficulty) or source
        family = cell.optional("family", _plain_text) or ""
        meta = {
            col: _jsonable(row[col])
            for col in importer.meta_columns
            if col in row and not _is_missing(row[col])
        }
        record = PromptRecord(
            id=record_id,
            source=source,
            prompt=prompt,
            answer=answer,
            difficulty=difficulty,
            family=family,
            meta=dump_meta(meta),
        )
        records.append((record, number))
    return (records if limit is None else records[:limit]), unit
