"""Readers: the shared benchmark files, generic jsonl/csv/parquet with a field mapping, and every bad-input error."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from eapo.data import IMPORTERS, DataError, make_id, read_records

BENCH = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "benchmarks"


def bench_file(rel: str) -> Path:
    path = BENCH / rel
    if not path.is_file():
        pytest.skip(f"shared benchmark file {path} is absent (read-only data from ../shared/data/benchmarks)")
    return path


# ------------------------------------------------------------------------------------------ real benchmark files


@pytest.mark.parametrize(
    "rel, kind, rows",
    [
        ("gsm8k/test.jsonl", "gsm8k", 1319),
        ("gsm8k/train.jsonl", "gsm8k", 7473),
        ("math500/test.jsonl", "math500", 500),
        ("aime24/test.jsonl", "aime24", 30),
        ("amc23/test.jsonl", "amc23", 40),
    ],
)
def test_benchmark_row_counts(rel, kind, rows):
    recs = read_records(bench_file(rel), kind)
    assert len(recs) == rows
    assert all(r.source == kind and r.prompt and r.answer for r in recs)
    assert all(r.id == make_id(kind, r.prompt) for r in recs)


def test_gsm8k_answers():
    recs = read_records(bench_file("gsm8k/test.jsonl"), "gsm8k")
    first = recs[0]
    assert first.answer == "18"
    assert first.prompt.startswith("Janet")
    assert first.difficulty == "gsm8k" and first.family == "" and first.meta == "{}"
    assert all("," not in r.answer and "####" not in r.answer for r in recs)
    train = read_records(bench_file("gsm8k/train.jsonl"), "gsm8k", limit=5)
    assert len(train) == 5 and train[0].answer == "72"


def test_gsm8k_thousands_commas_removed():
    recs = read_records(bench_file("gsm8k/train.jsonl"), "gsm8k")
    raw = [json.loads(line) for line in bench_file("gsm8k/train.jsonl").read_text().splitlines()]
    with_commas = [i for i, row in enumerate(raw) if "," in row["answer"].rsplit("####", 1)[1]]
    assert with_commas, "expected some GSM8K answers written with thousands commas"
    i = with_commas[0]
    assert recs[i].answer == raw[i]["answer"].rsplit("####", 1)[1].strip().replace(",", "")
    assert recs[i].answer.lstrip("-").replace(".", "").isdigit()


def test_amc23_float_answers_normalised():
    recs = read_records(bench_file("amc23/test.jsonl"), "amc23")
    assert recs[0].answer == "27"
    assert all(not r.answer.endswith(".0") for r in recs)
    assert json.loads(recs[0].meta)["id"] == 0


def test_math500_level_subject_unique_id():
    recs = read_records(bench_file("math500/test.jsonl"), "math500")
    first = recs[0]
    assert first.difficulty == "level-2"
    assert first.family == "Precalculus"
    assert json.loads(first.meta) == {"unique_id": "test/precalculus/807.json"}
    assert first.answer == r"\left( 3, \frac{\pi}{2} \right)"  # kept as given
    assert {r.difficulty for r in recs} == {f"level-{k}" for k in range(1, 6)}


def test_aime24_answers_kept_as_given():
    recs = read_records(bench_file("aime24/test.jsonl"), "aime24")
    assert recs[0].answer == "204"
    assert "025" in {r.answer for r in recs}  # a leading zero is kept


# ------------------------------------------------------------------------------------------------ generic files


ROWS = [
    {"q": "What is 1 + 1?", "a": 2, "uid": "r1", "lvl": "easy"},
    {"q": "What is 2 + 2?", "a": "4", "uid": "r2", "lvl": "easy"},
    {"q": "Name half of 3.", "a": 1.5, "uid": "r3", "lvl": "hard"},
]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def check_generic(recs, source):
    assert [r.prompt for r in recs] == [r["q"] for r in ROWS]
    assert [r.answer for r in recs] == ["2", "4", "1.5"]
    assert [r.difficulty for r in recs] == ["easy", "easy", "hard"]
    assert all(r.source == source for r in recs)


def test_generic_jsonl_with_mapping(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", ROWS)
    recs = read_records(
        path, "jsonl", name="mine", fields={"prompt": "q", "answer": "a", "difficulty": "lvl"}
    )
    check_generic(recs, "mine")
    assert recs[0].id == make_id("mine", "What is 1 + 1?")
    with_ids = read_records(path, "jsonl", name="mine", fields={"prompt": "q", "answer": "a", "id": "uid"})
    assert [r.id for r in with_ids] == ["r1", "r2", "r3"]
    assert [r.difficulty for r in with_ids] == ["mine"] * 3  # no difficulty column: the source name


def test_generic_jsonl_default_fields_and_name(tmp_path):
    path = write_jsonl(tmp_path / "my_prompts.jsonl", [{"prompt": "Say 3.", "answer": "3"}])
    (rec,) = read_records(path, "jsonl")
    assert rec.source == "my_prompts" and rec.answer == "3"


def test_generic_csv_with_mapping(tmp_path):
    path = write_csv(
        tmp_path / "mine.csv",
        'q,a,uid,lvl\n"What is 1 + 1?",2,r1,easy\n"What is 2 + 2?",4,r2,easy\n\n"Name half of 3.",1.5,r3,hard\n',
    )
    recs = read_records(path, "csv", name="mine", fields={"prompt": "q", "answer": "a", "difficulty": "lvl"})
    check_generic(recs, "mine")


def test_generic_parquet_with_mapping(tmp_path):
    path = tmp_path / "mine.parquet"
    table = pa.table(
        {"q": [r["q"] for r in ROWS], "a": ["2", "4", "1.5"], "lvl": [r["lvl"] for r in ROWS], "n": [1, 2, 3]}
    )
    pq.write_table(table, path)
    recs = read_records(
        path, "parquet", name="mine", fields={"prompt": "q", "answer": "a", "difficulty": "lvl"}
    )
    check_generic(recs, "mine")
    num = tmp_path / "num.parquet"
    pq.write_table(pa.table({"prompt": ["p1", "p2"], "answer": [27.0, 3.5]}), num)
    assert [r.answer for r in read_records(num, "parquet", name="num")] == ["27", "3.5"]


def test_named_kind_format_follows_extension(tmp_path):
    path = tmp_path / "gsm.parquet"
    pq.write_table(pa.table({"question": ["Q?"], "answer": ["work\n#### 1,234"]}), path)
    (rec,) = read_records(path, "gsm8k")
    assert rec.answer == "1234" and rec.source == "gsm8k"


# ------------------------------------------------------------------------------------------------ bad inputs


def assert_error(excinfo, path: Path, line: int | None, field: str | None, unit: str = "line"):
    msg = str(excinfo.value)
    assert path.name in msg, msg
    if line is not None:
        assert f"{unit} {line}" in msg, msg
    if field is not None:
        assert f"'{field}'" in msg, msg


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match="file not found") as ei:
        read_records(path, "gsm8k")
    assert_error(ei, path, None, None)


def test_malformed_json_names_line(tmp_path):
    path = write_jsonl(
        tmp_path / "bad.jsonl",
        [{"question": "a", "answer": "#### 1"}, "", '{"question": "b", "answer": '],
    )
    with pytest.raises(DataError, match="malformed JSON") as ei:
        read_records(path, "gsm8k")
    assert_error(ei, path, 3, None)


def test_non_object_json_line(tmp_path):
    path = write_jsonl(tmp_path / "list.jsonl", [{"prompt": "a", "answer": "1"}, "[1, 2]"])
    with pytest.raises(DataError, match="JSON object") as ei:
        read_records(path, "jsonl")
    assert_error(ei, path, 2, None)


@pytest.mark.parametrize(
    "bad", [{"question": "b"}, {"question": "b", "answer": ""}, {"question": "b", "answer": None}]
)
def test_missing_or_empty_answer(tmp_path, bad):
    path = write_jsonl(tmp_path / "noans.jsonl", [{"question": "a", "answer": "x\n#### 1"}, bad])
    with pytest.raises(DataError, match="answer") as ei:
        read_records(path, "gsm8k")
    assert_error(ei, path, 2, "answer")


def test_missing_prompt(tmp_path):
    path = write_jsonl(
        tmp_path / "noq.jsonl",
        [{"problem": "a", "answer": "1"}, {"problem": "b", "answer": "2"}, {"answer": "3"}],
    )
    with pytest.raises(DataError, match="missing") as ei:
        read_records(path, "math500")
    assert_error(ei, path, 3, "problem")


def test_empty_prompt(tmp_path):
    path = write_jsonl(tmp_path / "emptyq.jsonl", [{"prompt": "  ", "answer": "1"}])
    with pytest.raises(DataError, match="empty") as ei:
        read_records(path, "jsonl")
    assert_error(ei, path, 1, "prompt")


def test_gsm8k_answer_without_marker(tmp_path):
    path = write_jsonl(
        tmp_path / "nomark.jsonl",
        [{"question": "a", "answer": "so\n#### 5"}, {"question": "b", "answer": "just 5"}],
    )
    with pytest.raises(DataError, match="####") as ei:
        read_records(path, "gsm8k")
    assert_error(ei, path, 2, "answer")


def test_gsm8k_empty_final_answer(tmp_path):
    path = write_jsonl(tmp_path / "emptyfinal.jsonl", [{"question": "a", "answer": "so\n####  "}])
    with pytest.raises(DataError, match="empty") as ei:
        read_records(path, "gsm8k")
    assert_error(ei, path, 1, "answer")


def test_unknown_kind_lists_known(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"prompt": "a", "answer": "1"}])
    with pytest.raises(DataError) as ei:
        read_records(path, "gsm9k")
    msg = str(ei.value)
    assert "gsm9k" in msg and all(kind in msg for kind in IMPORTERS)


def test_mapping_to_missing_column_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "map.jsonl", [{"q": "a", "a": "1"}])
    with pytest.raises(DataError, match="does not exist") as ei:
        read_records(path, "jsonl", fields={"prompt": "question", "answer": "a"})
    assert_error(ei, path, 1, "question")
    assert "fields['prompt']" in str(ei.value) and "'q'" in str(ei.value)


def test_mapping_to_missing_column_csv(tmp_path):
    path = write_csv(tmp_path / "map.csv", "q,a\nhello,1\n")
    with pytest.raises(DataError, match="does not exist") as ei:
        read_records(path, "csv", fields={"prompt": "q", "answer": "gold"})
    assert_error(ei, path, 1, "gold")  # the header line


def test_mapping_to_missing_optional_column_parquet(tmp_path):
    path = tmp_path / "map.parquet"
    pq.write_table(pa.table({"prompt": ["a"], "answer": ["1"]}), path)
    with pytest.raises(DataError, match="does not exist") as ei:
        read_records(path, "parquet", fields={"difficulty": "level"})
    assert_error(ei, path, 1, "level", unit="row")


def test_unknown_mapping_key(tmp_path):
    path = write_jsonl(tmp_path / "keys.jsonl", [{"prompt": "a", "answer": "1"}])
    with pytest.raises(DataError, match="unknown keys") as ei:
        read_records(path, "jsonl", fields={"question": "prompt"})
    assert_error(ei, path, None, None)


def test_csv_empty_answer_and_short_row(tmp_path):
    path = write_csv(tmp_path / "bad.csv", "prompt,answer\nfine,1\nempty,\n")
    with pytest.raises(DataError, match="empty") as ei:
        read_records(path, "csv")
    assert_error(ei, path, 3, "answer")
    short = write_csv(tmp_path / "short.csv", "prompt,answer\nfine,1\nno answer here\n")
    with pytest.raises(DataError, match="short row: 1 value but the header has 2 columns") as ei:
        read_records(short, "csv")
    assert_error(ei, short, 3, None)
    assert "missing" not in str(ei.value)
    long = write_csv(tmp_path / "long.csv", "prompt,answer\nfine,1,extra\n")
    with pytest.raises(DataError, match="3 values") as ei:
        read_records(long, "csv")
    assert_error(ei, long, 2, None)


def test_parquet_null_answer_names_row(tmp_path):
    path = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b", "c"], "answer": ["1", None, "3"]}), path)
    with pytest.raises(DataError, match="empty") as ei:
        read_records(path, "parquet")
    assert_error(ei, path, 2, "answer", unit="row")


def test_not_a_parquet_file(tmp_path):
    path = write_csv(tmp_path / "fake.parquet", "prompt,answer\na,1\n")
    with pytest.raises(DataError, match="Parquet") as ei:
        read_records(path, "parquet")
    assert_error(ei, path, None, None)


def test_amc_nan_answer(tmp_path):
    path = tmp_path / "amc.jsonl"
    path.write_text('{"problem": "a", "answer": 3.0}\n{"problem": "b", "answer": NaN}\n')
    with pytest.raises(DataError) as ei:
        read_records(path, "amc23")
    assert_error(ei, path, 2, "answer")


def test_error_anywhere_means_no_output(tmp_path):
    rows = [{"prompt": f"p{i}", "answer": str(i)} for i in range(50)] + [{"prompt": "late"}]
    path = write_jsonl(tmp_path / "late.jsonl", rows)
    with pytest.raises(DataError) as ei:
        read_records(path, "jsonl", limit=3)  # the limit trims the output, not the checking
    assert_error(ei, path, 51, "answer")


def test_bad_limit_and_empty_file(tmp_path):
    path = write_jsonl(tmp_path / "ok.jsonl", [{"prompt": "a", "answer": "1"}])
    with pytest.raises(DataError, match="limit"):
        read_records(path, "jsonl", limit=-1)
    assert read_records(path, "jsonl", limit=0) == []
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="no records") as ei:
        read_records(empty, "jsonl")
    assert_error(ei, empty, None, None)


def test_named_kind_unknown_extension(tmp_path):
    path = tmp_path / "gsm.txt"
    path.write_text("{}\n")
    with pytest.raises(DataError, match="extension") as ei:
        read_records(path, "gsm8k")
    assert_error(ei, path, None, None)


# --------------------------------------------------------------------------------- CSV as strict as JSON Lines


@pytest.mark.parametrize("text,line", [
    # the quote opened on line 3 never closes: the old reader swallowed the next three lines into one answer
    ('prompt,answer\nWhat is 1+1?,2\nWhat is 2+2?,"4\nWhat is 3+3?,6\nWhat is 4+4?,8\nWhat is 5+5?,10\n', 3),
    # the quote opened on line 2 "closes" at the first quote of line 4, in the middle of a field
    ('prompt,answer\n"What is 1+1?,2\nWhat is 2+2?,4\n"What is 3+3?",6\n', 2),
    # after a legitimate multi-line field (lines 2-3), line 4 opens a quote that never closes
    ('prompt,answer\n"What is\n1+1?",2\n"What is 2+2?,4\n', 4),
    # Windows line ends, and a form feed inside a field (not a line break for the csv reader)
    ('prompt,answer\r\n"What\x0cis\r\n1+1?",2\r\nok,1\r\nWhat is 2+2?,"4\r\n5,5\r\n', 5),
])
def test_csv_unterminated_quote_names_the_line_where_it_opened(tmp_path, text, line):
    path = write_csv(tmp_path / "quote.csv", text)
    with pytest.raises(DataError, match="unterminated quote") as ei:
        read_records(path, "csv")
    assert_error(ei, path, line, None)


def test_csv_quoted_multiline_fields_still_read(tmp_path):
    path = write_csv(
        tmp_path / "multi.csv",
        'prompt,answer\n"What is\n1 + 1?",2\n"He said ""hi"", then: what is 2 + 2?","4"\nWhat is 3 + 3?,6\n',
    )
    recs = read_records(path, "csv")
    assert [r.prompt for r in recs] == ["What is\n1 + 1?", 'He said "hi", then: what is 2 + 2?', "What is 3 + 3?"]
    assert [r.answer for r in recs] == ["2", "4", "6"]
    bad = write_csv(tmp_path / "multi_bad.csv", 'prompt,answer\n"What is\n1 + 1?",2\nWhat is 3 + 3?,6\nshort\n')
    with pytest.raises(DataError, match="short row") as ei:
        read_records(bad, "csv")
    assert_error(ei, bad, 5, None)  # line numbers count the physical lines of the multi-line field


def test_duplicate_id_across_sources_names_both_files_and_lines(tmp_path):
    from types import SimpleNamespace

    from eapo.data import read_sources

    a = write_jsonl(tmp_path / "a.jsonl", [{"q": "What is 1 + 1?", "a": "2", "uid": "p1"},
                                           {"q": "What is 2 + 2?", "a": "4", "uid": "p2"}])
    b = write_csv(tmp_path / "b.csv", "q,a,uid\nWhat is 3 + 3?,6,p3\nWhat is 5 + 5?,10,p2\n")
    fields = {"prompt": "q", "answer": "a", "id": "uid"}
    src = [SimpleNamespace(path=str(a), kind="jsonl", name="mine", fields=fields, limit=None),
           SimpleNamespace(path=str(b), kind="csv", name="mine", fields=fields, limit=None)]
    with pytest.raises(DataError, match="duplicate id 'p2'") as ei:
        read_sources(src)
    msg = str(ei.value)
    assert_error(ei, b, 3, "uid")
    assert f"{a} line 2" in msg, msg
    # the same prompt under the same id is a plain duplicate (dedupe drops it), not a clash
    c = write_csv(tmp_path / "c.csv", "q,a,uid\nWhat is 2 + 2?,4,p2\n")
    src[1] = SimpleNamespace(path=str(c), kind="csv", name="mine", fields=fields, limit=None)
    first, second = read_sources(src)
    assert [r.id for r in first] == ["p1", "p2"] and [r.id for r in second] == ["p2"]


def test_duplicate_id_in_parquet_names_rows(tmp_path):
    from types import SimpleNamespace

    from eapo.data import read_sources

    path = tmp_path / "dup.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b", "c"], "answer": ["1", "2", "3"], "id": ["x", "y", "x"]}), path)
    with pytest.raises(DataError, match="duplicate id 'x'") as ei:
        read_sources([SimpleNamespace(path=str(path), kind="parquet", fields={"id": "id"})])
    assert_error(ei, path, 3, "id", unit="row")
    assert "row 1" in str(ei.value)
