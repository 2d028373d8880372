"""The seeded synthetic arithmetic generator."""

import json
import re
from collections import Counter

import pytest

from eapo.data import FAMILIES, DataError, generate, make_id, normalize_prompt

PATTERNS = {
    "add": re.compile(r"^What is (\d+) \+ (\d+)\?$"),
    "sub": re.compile(r"^What is (\d+) - (\d+)\?$"),
    "mul": re.compile(r"^What is (\d+) \* (\d+)\?$"),
    "chain": re.compile(r"^What is (\d+) \+ (\d+) - (\d+)\?$"),
    "compare": re.compile(r"^Which is larger: (\d+) or (\d+)\?$"),
}


def expected_answer(family: str, prompt: str) -> int:
    m = PATTERNS[family].match(prompt)
    assert m, f"{family}: unexpected phrasing {prompt!r}"
    x = [int(g) for g in m.groups()]
    if family == "add":
        return x[0] + x[1]
    if family == "sub":
        assert x[0] >= x[1], prompt
        return x[0] - x[1]
    if family == "mul":
        return x[0] * x[1]
    if family == "chain":
        return x[0] + x[1] - x[2]
    assert x[0] != x[1], prompt
    return max(x)


def digits(k: int) -> int:
    return len(str(k))


def test_registry_has_the_families():
    assert set(FAMILIES) == {"add", "sub", "mul", "chain", "compare"}


def test_same_seed_same_output_different_seed_differs():
    args = {"n": 200, "families": {"add": 2.0, "mul": 1.0, "chain": 1.0}, "levels": [1, 2]}
    a = generate(**args, seed=7)
    b = generate(**args, seed=7)
    c = generate(**args, seed=8)
    assert a == b
    assert [r.prompt for r in a] != [r.prompt for r in c]


def test_known_output_is_pinned():
    # numpy's Generator(PCG64) stream is stable across platforms; this pins the exact records for seed 0.
    got = [(r.prompt, r.answer, r.difficulty) for r in generate(3, ["add"], [1], seed=0)]
    assert got == [
        ("What is 3 + 0?", "3", "add-1"),
        ("What is 8 + 6?", "14", "add-1"),
        ("What is 5 + 2?", "7", "add-1"),
    ]
    # a single family name / a single level are accepted too, with the same meaning
    assert generate(3, "add", 1, seed=0) == generate(3, ["add"], [1], seed=0)


def test_answers_are_right_and_families_levels_honoured():
    fams = ["add", "sub", "mul", "chain", "compare"]
    recs = generate(
        500, fams, {"add": [1, 2], "sub": [2], "mul": [1, 2, 3], "chain": 1, "compare": [3]}, seed=1
    )
    assert len(recs) == 500
    counts = Counter(r.family for r in recs)
    assert counts == {f: 100 for f in fams}
    for r in recs:
        assert r.source == "synthetic"
        assert r.id == make_id("synthetic", r.prompt)
        assert int(r.answer) == expected_answer(r.family, r.prompt), r
        fam, level = r.difficulty.rsplit("-", 1)
        assert fam == r.family
        meta = json.loads(r.meta)
        assert meta["family"] == fam and meta["level"] == int(level) and meta["seed"] == 1
        nums = [int(x) for x in PATTERNS[fam].match(r.prompt).groups()]
        if fam == "mul":
            assert (digits(nums[0]), digits(nums[1])) == {"1": (1, 1), "2": (2, 1), "3": (2, 2)}[level]
        else:
            assert all(digits(k) == int(level) for k in nums), r
    assert {r.difficulty for r in recs} == {
        "add-1",
        "add-2",
        "sub-2",
        "mul-1",
        "mul-2",
        "mul-3",
        "chain-1",
        "compare-3",
    }


def test_weights_give_exact_counts_and_zero_weight_is_skipped():
    recs = generate(10, {"add": 3.0, "sub": 1.0, "mul": 0.0}, [2], seed=0)
    assert Counter(r.family for r in recs) == {
        "add": 8,
        "sub": 2,
    }  # 7.5/2.5 → largest remainder, ties by order
    assert generate(0, ["add"], [1], seed=0) == []


def test_no_duplicate_prompts_even_near_the_space_size():
    recs = generate(100, ["add"], [1], seed=3)  # 1-digit add has exactly 10 × 10 = 100 prompts
    assert len({normalize_prompt(r.prompt) for r in recs}) == 100
    big = generate(1000, ["add", "mul", "sub", "chain", "compare"], [2, 3], seed=5)
    assert len({r.id for r in big}) == 1000


def test_space_too_small_names_family_and_level():
    with pytest.raises(DataError, match=r"family 'compare' level 1.*too small"):
        generate(200, ["compare"], [1], seed=0)  # only 90 ordered pairs of distinct digits


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n": 5, "families": ["div"], "levels": [1]}, "unknown synthetic families"),
        ({"n": 5, "families": ["mul"], "levels": [6]}, "no level 6"),
        ({"n": 5, "families": ["add"], "levels": [0]}, "no level 0"),
        ({"n": -1, "families": ["add"], "levels": [1]}, "n must be"),
        ({"n": 5, "families": {"add": -1.0}, "levels": [1]}, "weight"),
        ({"n": 5, "families": {"add": 0.0}, "levels": [1]}, "positive weight"),
        ({"n": 5, "families": ["add", "sub"], "levels": {"add": [1]}}, "no levels for families"),
        ({"n": 5, "families": ["add"], "levels": []}, "empty level list"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(DataError, match=match):
        generate(**kwargs, seed=0)
