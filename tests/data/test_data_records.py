"""PromptRecord, ids and DataError formatting."""

import json

import pytest

from eapo.data import DataError, PromptRecord, make_id, normalize_prompt


def test_id_is_source_plus_hash_of_normalised_prompt():
    a = make_id("gsm8k", "What is  7 + 5?")
    b = make_id("gsm8k", "  what IS 7 +\n5? ")
    assert a == b
    assert a.startswith("gsm8k-") and len(a) == len("gsm8k-") + 12
    int(a.split("-", 1)[1], 16)  # hex
    assert make_id("gsm8k", "What is 7 + 6?") != a
    assert make_id("math500", "What is 7 + 5?").endswith(a.split("-", 1)[1])


def test_normalize_prompt_collapses_whitespace_and_case():
    assert normalize_prompt("  Hello\t\nWORLD  ") == "hello world"


def test_record_is_frozen_and_validated():
    r = PromptRecord(id="x-1", source="x", prompt="p", answer="1", difficulty="x")
    assert r.family == "" and r.meta == "{}"
    assert r.as_dict()["answer"] == "1"
    with pytest.raises(AttributeError):
        r.answer = "2"  # type: ignore[misc]
    with pytest.raises(DataError, match="answer"):
        PromptRecord(id="x-1", source="x", prompt="p", answer=" ", difficulty="x")
    with pytest.raises(DataError, match="meta"):
        PromptRecord(id="x-1", source="x", prompt="p", answer="1", difficulty="x", meta="[1]")
    with pytest.raises(DataError, match="answer"):
        PromptRecord(id="x-1", source="x", prompt="p", answer=1, difficulty="x")  # type: ignore[arg-type]
    r2 = PromptRecord(id="x-1", source="x", prompt="p", answer="1", difficulty="x", meta=json.dumps({"a": 1}))
    assert r2.meta_dict == {"a": 1}


def test_data_error_message_and_attributes():
    err = DataError("empty (answer)", path="/tmp/f.jsonl", line=3, field="answer")
    assert str(err) == "/tmp/f.jsonl: line 3: field 'answer': empty (answer)"
    assert (err.path, err.line, err.field) == ("/tmp/f.jsonl", 3, "answer")
    assert isinstance(err, ValueError)
