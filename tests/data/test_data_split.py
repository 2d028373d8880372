"""dedupe, filter_records, split_train_test, check_no_leakage."""

import random

import pytest

from eapo.data import (
    DataError,
    PromptRecord,
    check_no_leakage,
    dedupe,
    filter_records,
    generate,
    make_id,
    split_train_test,
)


def rec(prompt: str, source: str = "s", answer: str = "1") -> PromptRecord:
    return PromptRecord(
        id=make_id(source, prompt), source=source, prompt=prompt, answer=answer, difficulty=source
    )


def test_dedupe_first_occurrence_wins():
    records = [
        rec("What is 1 + 1?", answer="2"),
        rec("b"),
        rec("  what is 1 +   1? ", answer="x"),
        rec("B"),
        rec("c"),
    ]
    kept, dropped = dedupe(records)
    assert dropped == 2
    assert [r.prompt for r in kept] == ["What is 1 + 1?", "b", "c"]
    assert kept[0].answer == "2"
    assert dedupe([]) == ([], 0)


def test_split_is_seeded_deterministic_and_order_independent():
    records = generate(200, ["add", "mul"], [1, 2], seed=0)
    train, test = split_train_test(records, 0.25, seed=3)
    assert len(test) == 50 and len(train) == 150
    assert {r.id for r in train} | {r.id for r in test} == {r.id for r in records}
    assert not {r.id for r in train} & {r.id for r in test}
    shuffled = list(records)
    random.Random(1).shuffle(shuffled)
    assert split_train_test(shuffled, 0.25, seed=3) == (train, test)
    assert split_train_test(records, 0.25, seed=3) == (train, test)
    other = split_train_test(records, 0.25, seed=4)
    assert {r.id for r in other[1]} != {r.id for r in test}
    check_no_leakage(train, test)


def test_split_sizes_and_bad_arguments():
    records = [rec(f"p{i}") for i in range(10)]
    train, test = split_train_test(records, 0.01, seed=0)
    assert (len(train), len(test)) == (9, 1)  # at least one test record
    train, test = split_train_test(records, 0.99, seed=0)
    assert (len(train), len(test)) == (1, 9)  # at least one train record
    for bad in (0, 1, 1.5, -0.1):
        with pytest.raises(DataError, match="test_fraction"):
            split_train_test(records, bad, seed=0)
    with pytest.raises(DataError, match="at least 2"):
        split_train_test(records[:1], 0.5, seed=0)


def test_leakage_check_catches_planted_duplicate():
    records = [rec(f"question {i}") for i in range(20)]
    train, test = split_train_test(records, 0.2, seed=0)
    check_no_leakage(train, test)
    planted = PromptRecord(
        id=make_id("other", "x"),
        source="other",
        prompt="  " + train[5].prompt.upper() + " ",
        answer="9",
        difficulty="other",
    )
    with pytest.raises(DataError) as ei:
        check_no_leakage(train, test + [planted])
    assert planted.id in str(ei.value) and train[5].id in str(ei.value)
    same_id = PromptRecord(id=train[0].id, source="s", prompt="fresh text", answer="1", difficulty="s")
    with pytest.raises(DataError, match=train[0].id):
        check_no_leakage(train, [same_id])


def test_filter_records():
    records = [rec("short", source="a"), rec("a much longer prompt", source="b"), rec("tiny", source="b")]
    assert [r.prompt for r in filter_records(records, max_prompt_chars=5)] == ["short", "tiny"]
    assert [r.prompt for r in filter_records(records, sources=["b"])] == ["a much longer prompt", "tiny"]
    assert [r.prompt for r in filter_records(records, max_prompt_chars=5, sources="b")] == ["tiny"]
    assert filter_records(records) == records
    with pytest.raises(DataError, match="zero rows after filtering"):
        filter_records(records, sources=["gsm8k"])
    with pytest.raises(DataError, match="zero rows after filtering"):
        filter_records(records, max_prompt_chars=3)
    with pytest.raises(DataError, match="max_prompt_chars"):
        filter_records(records, max_prompt_chars=0)
