"""Grading cases of issues 12 and 16, independent of ../shared: what a careful human (and each benchmark's own
grader; math-verify's documented behaviour is the reference) counts right, and what must stay 0.

Most cases run `grade` in process (the function the pool's workers run), so the table is fast; a few go through a
`RewardScorer` to check the pool path and the truncation rule."""

from __future__ import annotations

import time

import pytest

from eapo.reward import (
    Extraction,
    GradeOptions,
    RewardResult,
    RewardScorer,
    clean_text,
    extract_answer,
    grade,
    normalize_gold,
    parse_number,
)

# (response, gold): each must score 1.
MUST_BE_1 = [
    # issue 12: percentages (math-verify: 9% == 9, and 25% == 0.25)
    (r"So the discount is \boxed{25\%}", "25"),
    (r"\boxed{25\%}", "0.25"),
    ("The answer is 40%.", "40"),
    (r"\boxed{25}", r"25\%"),
    # issue 12: scientific notation, plain and LaTeX
    (r"\boxed{1e3}", "1000"),
    (r"\boxed{1.0E3}", "1000"),
    ("The answer is 2.5e-3.", "0.0025"),
    (r"\boxed{5.2\times10^{3}}", "5200"),
    (r"\boxed{5.2 \cdot 10^3}", "5200"),
    ("So the distance is 3 \\times 10^{8}.", "300000000"),
    # issue 12: trailing units and currency words
    ("The answer is 12 dollars", "12"),
    ("The answer is 12 dollars.", "#### 12"),
    (r"\boxed{12\text{ cm}}", "12"),
    ("Final answer: 7 apples", "7"),
    ("The answer is $18.90.", "18.9"),
    (r"\boxed{\$18.90}", r"\$18.90"),
    # issue 12: the last "= value" of a final answer sentence
    ("The answer is 26*11 = 286.", "286"),
    (r"\boxed{26 \times 11 = 286}", "286"),
    ("Janet sells 16 - 3 - 4 = 9 eggs.\nShe makes 9 * 2 = $18 every day.", "#### 18"),
    # issue 12: thousands separators in the usual forms
    (r"\boxed{1{,}200}", "1200"),
    (r"\boxed{1\,200}", "1,200"),
    (r"\boxed{1\!200}", "1200"),
    ("The answer is 1\u00a0200.", "1200"),
    ("The answer is 1,200.", "#### 1200"),
    (r"\boxed{1,234,567}", "1234567"),
    # issue 12: stray control characters and null bytes
    ("The answer is \x00286.", "286"),
    ("\\boxed{2\x0086}", "286"),
    ("The answer\x07 is 286\r\n", "286"),
    # issue 16: golds "#### 120", "1,200", "100.0"; signs; trailing punctuation; prose after "answer is"
    ("The answer is 120.", "She has 120 left.\n#### 120"),
    (r"\boxed{1200}", "1,200"),
    (r"\boxed{100}", "100.0"),
    ("The answer is -5.", "-5"),
    ("The answer is \u22125.", "-5"),  # Unicode minus
    ("The answer is 42,", "42"),
    ("The answer is 42;", "42"),
    ("The answer is: 42:", "42"),
    ("The answer is 42!", "42"),
    ("The answer is 42, which is the total number of apples.", "42"),
    ("The answer is 42 apples in total.", "42"),
    # GSM8K-style last line, a final sentence with one number
    ("First 3 + 4 = 7.\nSo she has 1,234 apples in total.", "#### 1,234"),
    # MATH500-style (math-verify)
    (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}"),
    (r"\boxed{\dfrac{1}{2}}", r"\frac12"),
    (r"\boxed{(3, -1)}", "(3,-1)"),
    (r"\boxed{x = 5}", "5"),
    (r"\boxed{5x - 7y + 11z + 4 = 0}", "5x - 7y + 11z + 4 = 0"),  # an equation is the answer, not its "= 0"
    (r"\boxed{0.5}", r"\frac{1}{2}"),
    # AMC/AIME-style: integer answers with leading zeros, float golds
    (r"\boxed{033}", "33"),
    (r"\boxed{33}", 33),
    ("They meet after 27 miles.", 27.0),
]

# (response, gold): each must score 0 (wrong answers and reward hacks).
MUST_BE_0 = [
    # issue 16: "-5" against "5", 120 vs 12, sign and magnitude
    (r"\boxed{-5}", "5"),
    ("The answer is 5.", "-5"),
    (r"\boxed{12}", "#### 120"),
    (r"\boxed{120}", "12"),
    (r"\boxed{1,20}", "120"),
    (r"\boxed{100.5}", "100.0"),
    # percentages and scientific notation that are wrong
    (r"\boxed{25\%}", "2.5"),
    (r"\boxed{25}", "0.25"),
    ("The answer is 5%.", "0.5"),
    (r"\boxed{1e4}", "1000"),
    (r"\boxed{5.2\times10^{2}}", "5200"),
    ("The answer is 12 dollars", "13"),
    # restating the question: an unevaluated expression is not the number
    ("26 * 11", "286"),
    (r"\boxed{26 \times 11}", "286"),
    ("The answer is 26 \\times 11.", "286"),
    ("The answer is 286 - 1.", "286"),
    # several candidate answers
    ("The answer is 5 or 6.", "5"),
    ("The answer is 3, 4, 5.", "5"),
    (r"\boxed{3, 4, 5}", "5"),
    (r"\boxed{\{3,4,5\}}", "4"),
    ("It is 3, 4 or 5.", "5"),
    # an expression that merely contains the gold
    (r"\boxed{2860}", "286"),
    (r"\boxed{286x}", "286"),
    ("The answer is 5x.", "5"),
    ("So it is 5x.", "5"),
    (r"\boxed{10^{286}}", "286"),
    (r"\boxed{5!}", "5"),  # a factorial, not "5" with an exclamation mark
    ("So 2x + 3 = 5.", "5"),  # an equation in x, whose right side happens to be the gold
    (r"\boxed{2x + 3 = 5}", "5"),
    ("The answer is 2x + 3 = 5.", "5"),
    (r"\boxed{5x - 7y + 11z + 4 = 0}", "0"),
    # noise: a run-on final "sentence" whose only number is the gold, an incoherent final line
    ("the cat " * 40 + "sat on 286 mats and then the dog " * 3, "286"),
    ("blah 286 blah 3 blah 286", "286"),
    # a null byte does not join two numbers into the gold
    ("\\boxed{2\x0085}", "286"),
    # benchmark formats
    ("She makes 9 * 2 = $18 every day.", "#### 19"),
    (r"\boxed{33}", "330"),
    (r"\boxed{\frac{\sqrt{3}}{3}}", r"\frac{\sqrt{3}}{2}"),
    (r"\boxed{(3,1)}", "(3,-1)"),
    ("They meet after 26 miles.", 27.0),
    # near misses of the must-be-1 forms
    (r"So the discount is \boxed{25\%}", "26"),
    ("The answer is 40%.", "4"),
    (r"\boxed{1.0E3}", "100"),
    ("The answer is 2.5e-3.", "0.025"),
    (r"\boxed{5.2 \cdot 10^3}", "520"),
    ("So the distance is 3 \\times 10^{8}.", "30000000"),
    (r"\boxed{12\text{ cm}}", "120"),
    ("Final answer: 7 apples", "17"),
    ("The answer is $18.90.", "18.09"),
    ("The answer is 26*11 = 285.", "286"),
    (r"\boxed{1{,}200}", "12"),
    ("The answer is 1,200.", "#### 1.2"),
    ("The answer is \x00285.", "286"),
    ("The answer is 42, which is the total number of apples.", "420"),
    ("The answer is -5.", "5"),
    (r"\boxed{\dfrac{1}{2}}", r"\frac13"),
    (r"\boxed{x = 6}", "5"),
    (r"\boxed{033}", "3"),
]


def test_at_least_as_many_must_be_zero_cases_as_must_be_one():
    assert len(MUST_BE_0) >= len(MUST_BE_1)


@pytest.mark.parametrize(("response", "gold"), MUST_BE_1)
def test_must_be_1(response, gold):
    reward, extracted, method, failure = grade(response, gold)
    assert (reward, failure) == (1.0, None), (response, gold, extracted, method, failure)


@pytest.mark.parametrize(("response", "gold"), MUST_BE_0)
def test_must_be_0(response, gold):
    reward, extracted, method, failure = grade(response, gold)
    assert reward == 0.0, (response, gold, extracted, method, failure)


def test_hacks_are_zero_for_the_right_reason():
    assert grade(r"\boxed{26 \times 11}", "286")[3] == "unevaluated_expression"
    assert grade("26 * 11", "286")[1:] == (None, "none", "no_answer")  # two numbers: no readable final answer
    assert grade("It is 3, 4 or 5.", "5")[3] == "no_answer"


# -- parse_number and normalize_gold -------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "value", "percent"), [
    ("1,200", "1200", False), ("1{,}200", "1200", False), ("1\\,200", "1200", False), ("100.0", "100", False),
    ("-5", "-5", False), ("25\\%", "25", True), ("25 percent", "25", True), ("1e3", "1000", False),
    ("2.5E-3", "0.0025", False), ("5.2\\times10^{3}", "5200", False), ("10^{3}", "1000", False),
    ("$18.90", "18.9", False), ("12 \\text{ dollars}", "12", False), ("3 apples each", "3", False),
])
def test_parse_number_reads(text, value, percent):
    num = parse_number(text)
    assert num is not None and num.value == parse_number(value).value and num.percent is percent, (text, num)


@pytest.mark.parametrize("text", ["1,20", "1 234", "5 or six", "5x", "5 pi", "3/4", "x", "", "1e999999",
                                  "10^{99999999}", "2^{10}", "(C)"])
def test_parse_number_refuses(text):
    assert parse_number(text) is None, text


def test_normalize_gold_forms():
    assert normalize_gold("#### 120") == "120"  # not "12": a regression of issue 16
    assert normalize_gold("1,200") == "1200"
    assert normalize_gold("100.0") == "100"
    assert normalize_gold(100.0) == "100"
    assert normalize_gold("-5") == "-5"
    assert normalize_gold(r"25\%") == "25%"
    assert normalize_gold("1e3") == "1000"
    assert normalize_gold("1\x00 2") == "1 2"  # a null byte dropped; not a number
    assert normalize_gold(r"\frac{3}{4}") == r"\frac{3}{4}"


def test_clean_text_drops_controls_keeps_layout():
    assert clean_text("a\x00b\x07c\r\nd\te\u2212") == "abc\n\nd\te-"


# -- the last-number fallback only where a final answer can be read --------------------------------------------------


def test_last_number_only_from_the_final_sentence_of_a_response_that_ended():
    text = "We add 3 and 4 to get 7. So the answer must be 7"
    assert extract_answer(text) == Extraction("7", "last_number")
    assert extract_answer(text, ended=False) == Extraction(None, "none")  # cut at the token limit
    assert extract_answer(text, fallback="answer_is") == Extraction(None, "none")
    # a final sentence with several numbers and no "=" has no readable answer
    assert extract_answer("I think 7, or maybe 8") == Extraction(None, "none")
    # the number before the last sentence is not the answer
    assert extract_answer("The total is 7. Let me check again") == Extraction(None, "none")
    # boxed and "answer is" still work for a cut response
    assert extract_answer(r"\boxed{7} and then we", ended=False) == Extraction("7", "boxed")
    assert extract_answer("The answer is 7. Then", ended=False) == Extraction("7", "answer_is")


def test_truncated_response_scores_zero_by_default_and_is_configurable():
    responses = ["Adding them we get 286", "Adding them we get 286", r"\boxed{286} and then the next"]
    with RewardScorer(timeout_s=5.0, workers=1) as scorer:
        got = scorer.score(responses, ["286"] * 3, truncated=[True, False, True])
    assert got[0] == RewardResult(0.0, None, "none", "truncated")
    assert got[1] == RewardResult(1.0, "286", "last_number", None)
    assert got[2] == RewardResult(0.0, None, "none", "truncated")
    with RewardScorer(timeout_s=5.0, workers=1, score_truncated=True) as scorer:
        got = scorer.score(responses, ["286"] * 3, truncated=[True, False, True])
    assert got[0] == RewardResult(0.0, None, "none", "no_answer")  # graded, but not by the last number
    assert got[1].reward == 1.0
    assert got[2] == RewardResult(1.0, "286", "boxed", None)


def test_from_config_passes_score_truncated():
    from eapo.config import RewardConfig

    scorer = RewardScorer.from_config(RewardConfig(score_truncated=True, timeout_s=3.0, workers=1))
    try:
        assert (scorer.score_truncated, scorer.timeout_s, scorer.workers) == (True, 3.0, 1)
    finally:
        scorer.close()
    assert RewardConfig().score_truncated is False


# -- no super-linear regex on response text ---------------------------------------------------------------------------

ADVERSARIAL = {
    "answer_is_repeated": "answer is " * 2000,
    "answer_colon_repeated": "answer:" * 2850,
    "answer_is_then_words": "the answer is " + "x " * 10000,
    "answer_then_spaces": ("answer" + " " * 200) * 95,
    "comma_digit_chain": "1," * 10000,
    "thousands_chain_bad_tail": "1" + ",000" * 4999 + "0",
    "open_exponents": "\\boxed{" + "^{9" * 3000 + "}",
    "digit_then_spaces": ("1" + " " * 50) * 400,
    "sentences_of_digits": "1. " * 6600,
    "equals_chain": "= 1 " * 5000,
    "percent_chain": "1% " * 6600,
    "sci_chain": "1e" * 10000,
    "times_chain": "\\times 10^" * 2000,
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_extraction_is_linear_on_crafted_20k_responses(name):
    """A 20k-character response grades in milliseconds (7 ms at most here); a super-linear pattern takes seconds.
    The best of three runs is timed: a test worker descheduled under load once read 0.53 s for a 7 ms grading."""
    text = ADVERSARIAL[name][:20000]
    seconds = []
    for _ in range(3):
        t0 = time.perf_counter()
        grade(text, "1", GradeOptions(), ended=True)
        seconds.append(time.perf_counter() - t0)
    assert min(seconds) < 0.5, (name, seconds)


# -- the in-process helpers around grade (issue 16) -------------------------------------------------------------------


def test_extraction_rate_and_accuracy_count_the_right_results():
    from eapo.reward import accuracy, extraction_rate

    rs = [RewardResult(1.0, "1", "boxed"), RewardResult(0.0, None, "none", "no_answer"),
          RewardResult(0.0, None, "none", "no_answer"), RewardResult(0.0, "7", "last_number")]
    assert extraction_rate(rs) == 0.5
    assert extraction_rate(rs[:3]) == pytest.approx(1 / 3)
    assert accuracy(rs[:3]) == pytest.approx(1 / 3)
    assert accuracy([RewardResult(1.0, "1", "boxed")] * 3 + rs[1:2]) == 0.75


def test_check_answer_normalises_the_gold_and_compares_numbers_exactly():
    from eapo.reward import check_answer

    assert check_answer("1200", "#### 1,200")
    assert check_answer("120", "120") and not check_answer("12", "120")
    assert not check_answer("5", "-5") and not check_answer("-5", "5")
    assert check_answer("0.25", "25%") and check_answer("100", "100.0")
    assert check_answer("27", 27.0)
    # Not both numbers: math-verify decides.
    assert check_answer(r"\frac{1}{2}", "0.5") and not check_answer(r"\frac{1}{3}", "0.5")


def test_grade_task_turns_a_grader_exception_into_a_parse_error_verdict():
    from eapo.reward import _grade_task

    class Unprintable:
        def __str__(self):
            raise RuntimeError("x" * 300)

    assert _grade_task("The answer is 5.", "5", GradeOptions(), True, False) == (1.0, "5", "answer_is", None)
    assert _grade_task("It is 5", "5", GradeOptions(), False, True) == grade("It is 5", "5", ended=False, cut=True)
    # ended and the options reach grade: the last-number fallback needs a response that ended by itself.
    assert _grade_task("It is 5", "5", GradeOptions(), True, False) == (1.0, "5", "last_number", None)
    assert _grade_task("It is 5", "5", GradeOptions(), False, False) == (0.0, None, "none", "no_answer")
    assert _grade_task("The answer is 5.", "5", GradeOptions(fallback="none"), True, False) == \
        (0.0, None, "none", "no_answer")
    reward, extracted, method, failure = _grade_task("The answer is 5.", Unprintable(), GradeOptions(), True, False)
    assert (reward, extracted, method) == (0.0, None, "none")
    assert failure == "parse_error: RuntimeError: " + "x" * 200


def test_result_keeps_the_verdict_and_puts_the_note_only_on_a_missing_answer():
    from eapo.reward import _result

    r = _result((1, "5", "boxed", None), None)
    assert r == RewardResult(1.0, "5", "boxed", None) and type(r.reward) is float
    assert _result((0.0, None, "none", "no_answer"), "truncated").failure == "truncated"
    assert _result((0.0, "5", "boxed", None), "note").failure == "note"
    assert _result((0.0, None, "none", "timeout"), "note").failure == "timeout"
    assert _result((0.0, None, "none", "no_answer"), None).failure == "no_answer"


def test_gold_key_keeps_types_apart_and_is_hashable():
    from eapo.reward import _gold_key

    keys = [_gold_key(g) for g in (27.0, "27.0", 27, True, None, [1, 2], {"a": 1})]
    assert len(set(keys)) == len(keys)
    assert _gold_key(27.0) == ("float", 27.0) and _gold_key("27.0") == ("str", "27.0")
    assert _gold_key([1, 2]) == ("list", "[1, 2]") and _gold_key([1, 2]) == _gold_key([1, 2])


# -- the extraction and normalisation helpers, one rule at a time (issue 16) ------------------------------------------


def test_strip_delimiters_removes_wrappers_in_any_order_but_keeps_a_factorial():
    from eapo.reward import _strip_delimiters

    assert _strip_delimiters("  **$42$**. ") == "42"
    assert _strip_delimiters(r"\(3\)") == "3" and _strip_delimiters(r"\[ 7 \]") == "7"
    assert _strip_delimiters("$\\(5\\)$;") == "5"  # nested wrappers: several passes
    assert _strip_delimiters("120,") == "120" and _strip_delimiters("9:") == "9" and _strip_delimiters("8;") == "8"
    assert _strip_delimiters("5!") == "5!"
    assert _strip_delimiters(r"\(2") == r"\(2"  # unbalanced: kept
    assert _strip_delimiters("**$**$1$**$**") == "1"  # four passes peel four layers


def test_parse_number_forms_and_refusals():
    from decimal import Decimal

    from eapo.reward import Number

    cases = {
        "1234": Number(Decimal("1234")), "-3": Number(Decimal("-3")), "+4": Number(Decimal("4")),
        ".5": Number(Decimal("0.5")), "27.0": Number(Decimal("27.0")), "1,234,567": Number(Decimal("1234567")),
        "1{,}200": Number(Decimal("1200")), "1\\,200": Number(Decimal("1200")), "1\\!200": Number(Decimal("1200")),
        "1\u00a0200": Number(Decimal("1200")), "1\u202f200": Number(Decimal("1200")), "€5": Number(Decimal("5")),
        "£5": Number(Decimal("5")), "¥5": Number(Decimal("5")), "\\$5": Number(Decimal("5")),
        "25\\%": Number(Decimal("25"), True), "25 percent": Number(Decimal("25"), True),
        "25 pct": Number(Decimal("25"), True), "12 dollars": Number(Decimal("12")),
        "12\\text{ cm}": Number(Decimal("12")), "3 apples each": Number(Decimal("3")),
        "40% off": Number(Decimal("40"), True), "40% of them": None,
        "\\left(7\\right)": None, "\\left 7\\right": Number(Decimal("7")), "\\displaystyle 8": Number(Decimal("8")),
        "1e3": Number(Decimal("1e3")), "2.5E-3": Number(Decimal("2.5e-3")), "10^{3}": Number(Decimal("1e3")),
        "10^4": Number(Decimal("1e4")), "5.2\\times10^{3}": Number(Decimal("5.2e3")),
        "3 \\cdot 10^{-2}": Number(Decimal("3e-2")), "2 x 10^3": Number(Decimal("2e3")),
        "1e10001": None, "10^{10001}": None, "5.2\\times10^{10001}": None, "1e10000": Number(Decimal("1e10000")),
        "5 km/h": None, "5 or six": None, "5 pi": None, "": None, "1" * 201: None, "1,23": None, "12,3456": None,
        "a b c d 5": None, "5 a b c d": None,
    }
    for text, want in cases.items():
        got = parse_number(text)
        assert got == want, (text, got, want)
    assert parse_number("1" * 200) == Number(Decimal("1" * 200))
    # Decimal keeps the digits written: exact, never a float.
    assert parse_number("0.1").value == Decimal("0.1") and parse_number("1,200.50").value == Decimal("1200.50")


def test_strip_unit_words_takes_up_to_three_unit_words_after_a_number():
    from eapo.reward import _strip_unit_words

    assert _strip_unit_words("12 dollars") == "12"
    assert _strip_unit_words("3 square metres each") == "3"
    assert _strip_unit_words("3 a bb cc dd") is None  # a single letter is no unit word
    assert _strip_unit_words("3 bb cc dd ee") is None  # four words: the number is not right before the third
    assert _strip_unit_words("5 m^2") is None and _strip_unit_words("5 cm^2") == "5"
    assert _strip_unit_words("5 km.") == "5" and _strip_unit_words("5 times") is None
    assert _strip_unit_words("40% tax") == "40%" and _strip_unit_words("x dollars") is None
    assert _strip_unit_words("dollars") is None and _strip_unit_words("12") is None
    assert _strip_unit_words("7 Dollars") == "7" and _strip_unit_words("7 Plus") is None


def test_numbers_equal_exact_and_percent_either_side():
    from decimal import Decimal

    from eapo.reward import Number, _numbers_equal

    n = lambda s, p=False: Number(Decimal(s), p)  # noqa: E731
    assert _numbers_equal(n("2.50"), n("2.5"))
    assert not _numbers_equal(n("5"), n("-5"))
    assert _numbers_equal(n("0.25"), n("25", True)) and _numbers_equal(n("25", True), n("0.25"))
    assert _numbers_equal(n("25"), n("25", True)) and _numbers_equal(n("25", True), n("25"))
    assert not _numbers_equal(n("25", True), n("0.25", True))  # both percentages: only the same number
    assert not _numbers_equal(n("2.5"), n("25", True)) and not _numbers_equal(n("25", True), n("2.5"))
    assert not _numbers_equal(n("0.25"), n("2500", True)) and not _numbers_equal(n("2500", True), n("0.25"))


def test_match_braces_and_last_boxed():
    from eapo.reward import _last_boxed, _match_braces

    assert _match_braces("{a{b}c}") == {0: 6, 2: 4}
    assert _match_braces(r"{\}}") == {0: 3}  # an escaped brace is literal
    assert _match_braces("}{") == {} and _match_braces("{") == {}
    assert _match_braces("a\\") == {}  # a trailing backslash ends the scan
    assert _last_boxed(r"\boxed{1} and \boxed{ } then \fbox {2}") == "2"
    assert _last_boxed(r"\boxed{1} and \boxed{  }") == "1"  # an empty last box is skipped
    assert _last_boxed(r"\boxed{7} then \boxed{8") == "7"
    assert _last_boxed(r"\boxed 5") is None and _last_boxed("no box") is None and _last_boxed(r"\fbox{3}") == "3"
    assert _last_boxed(r"\boxed{ {x} }") == "{x}"


def test_sentence_end_and_final_sentence():
    from eapo.reward import MAX_FINAL_SENTENCE_CHARS, _final_sentence, _sentence_end

    assert _sentence_end("It is 3.5 now. Next") == 13
    assert _sentence_end("Wow! yes") == 3 and _sentence_end("Why? no") == 3 and _sentence_end("end.") == 3
    assert _sentence_end("no end") == 6 and _sentence_end("") == 0
    assert _final_sentence("First. Second one.\n\nThird is 7.\n") == "Third is 7"
    assert _final_sentence("A. B is 3!? ") == "B is 3"
    assert _final_sentence("Only\nline two. So 4") == "So 4"
    long = "x" * MAX_FINAL_SENTENCE_CHARS
    assert _final_sentence(long) == long and _final_sentence("y" + long) is None
    # A final sentence of exactly the limit after an earlier one is still read (the bound is inclusive).
    assert _final_sentence("Lead. " + long) == long
    assert _final_sentence("Lead. y" + long) is None
    assert _final_sentence("") == "" and _final_sentence("...") == ""


def test_is_computation_and_final_value():
    from eapo.reward import _final_value, _is_computation

    assert _is_computation("26*11") and _is_computation("She makes 9 * 2") and _is_computation("x")
    assert _is_computation("\\frac{3}{4}") and _is_computation("3 \\times 4")
    assert not _is_computation("2x + 3") and not _is_computation("5x - 7y + 11z + 4")
    assert not _is_computation("the total") and not _is_computation("xy")
    assert _final_value("26*11 = 286") == "286" and _final_value("x = 5") == "5"
    assert _final_value("2x + 3 = 5") == "2x + 3 = 5" and _final_value("a = b") == "a = b"
    assert _final_value("1 = 2 = $3$.") == "3" and _final_value("no equals") == "no equals"


def test_answer_candidate_and_answer_is():
    from eapo.reward import _answer_candidate, _answer_is

    assert _answer_candidate(" is 42. More") == "42"
    assert _answer_candidate(": 1,234\nnext line") == "1234"
    assert _answer_candidate("** is: **7**") == "7"
    assert _answer_candidate(" was 5") is None
    assert _answer_candidate(" is 42 apples in total, which is nice") == "42"
    assert _answer_candidate(" is 42 apples for 3 kids and more words") is None
    assert _answer_candidate(" is the number we want") is None
    assert _answer_candidate(r" is \frac{3}{4} exactly") == r"\frac{3}{4} exactly"
    assert _answer_candidate(" is " + "9" * 201) is None and _answer_candidate(" is .") is None
    assert _answer_candidate(" is 3 + 4 = 7.") == "7"
    assert _answer_is("The answer is 5. The answer is 6.") == "6"
    assert _answer_is("The answer is 5. My answer, then.") == "5"  # a later unreadable one is passed over
    assert _answer_is("no such word") is None


def test_numbers_in_and_last_number():
    from eapo.reward import _last_number, _numbers_in

    assert _numbers_in("from 3 to -4.5 and 1,234 or 3/4 with 25% and 2e3") == \
        ["3", "-4.5", "1,234", "3/4", "25%", "2e3"]
    assert _numbers_in("5x + 2") is None and _numbers_in("5 x") == ["5"] and _numbers_in("5ab") == ["5"]
    assert _numbers_in("x-3") == ["3"]  # a binary minus is no sign
    assert _last_number("So the total is 1,234") == "1234"
    assert _last_number("So 10 - 3 = 7") == "7"
    assert _last_number("So 2x + 3 = 7") is None  # an equation in a variable
    assert _last_number("Then 7 = 3 + 4") is None  # after the "=" an expression
    assert _last_number("Between 3 and 4") is None and _last_number("No number") is None
    assert _last_number("x" * 300) is None


def test_format_decimal_and_depth():
    from decimal import Decimal

    from eapo.reward import _depth, _format_decimal

    assert [_format_decimal(Decimal(s)) for s in ("27.0", "2.50", "-0", "1E+3", "0.000", "100", "-1.10")] == \
        ["27", "2.5", "0", "1000", "0", "100", "-1.1"]
    assert _depth("a{b(c[d])}") == 3 and _depth("{}{}") == 1 and _depth("") == 0
    assert _depth("}}{") == 1  # unmatched closers do not go below 0
    assert _depth("(()") == 2


def test_normalize_gold_types_and_wrappers():
    assert normalize_gold(None) == "" and normalize_gold(True) == "1" and normalize_gold(False) == "0"
    assert normalize_gold(120) == "120" and normalize_gold(-7) == "-7"
    assert normalize_gold(120.0) == "120" and normalize_gold(0.1) == "0.1" and normalize_gold(1e-7) == "0.0000001"
    assert normalize_gold(float("inf")) == "inf" and normalize_gold(float("nan")) == "nan"
    assert normalize_gold("#### 120") == "120" and normalize_gold("a #### 1 #### 2") == "2"
    assert normalize_gold("100.0") == "100" and normalize_gold("1,200") == "1200" and normalize_gold("-5") == "-5"
    assert normalize_gold(r"25\%") == "25%" and normalize_gold("  $\\$12$ ") == "12"
    assert normalize_gold(r"\boxed{7}") == "7" and normalize_gold(r"\boxed{1} + \boxed{2}") == r"\boxed{1} + \boxed{2}"
    assert normalize_gold(r"\boxed{x}") == "x" and normalize_gold("\x00 5 \x01") == "5"


def test_grade_failure_reasons_in_process():
    opts = GradeOptions()
    assert grade("nothing", "5") == (0.0, None, "none", "no_answer")
    assert grade("nothing", "5", cut=True) == (0.0, None, "none", "too_long")
    assert grade(r"\boxed{5}", None) == (0.0, "5", "boxed", "invalid_gold")
    assert grade(r"\boxed{5}", "  ") == (0.0, "5", "boxed", "invalid_gold")
    assert grade(r"\boxed{3 + 4}", "7") == (0.0, "3 + 4", "boxed", "unevaluated_expression")
    assert grade(r"\boxed{2x = 7}", "7") == (0.0, "2x = 7", "boxed", "unevaluated_expression")
    no_reject = GradeOptions(reject_unevaluated=False)
    assert grade(r"\boxed{3 + 4}", "7", no_reject)[0] == 1.0
    assert grade(r"\boxed{x+1}", r"\frac12", GradeOptions(max_answer_chars=2)) == \
        (0.0, "x+1", "boxed", "answer_too_complex")
    assert grade(r"\boxed{x+1}", r"\frac12", GradeOptions(max_answer_chars=3))[3] is None
    assert grade(r"\boxed{((x))}", "y", GradeOptions(max_answer_depth=1))[3] == "answer_too_complex"
    assert grade(r"\boxed{((x))}", "y", GradeOptions(max_answer_depth=2))[3] is None
    assert grade(r"\boxed{9^9^9}", "y", opts)[3] == "answer_too_complex"
    assert grade("It is 5", "5", ended=False) == (0.0, None, "none", "no_answer")
    assert grade("It\x00 is 5", "5") == (1.0, "5", "last_number", None)


def test_sentence_and_computation_edge_cases():
    from eapo.reward import _answer_candidate, _final_sentence, _is_computation, _last_number, _sentence_end

    assert _sentence_end("MAX value. Next") == 9  # only . ! ? end a sentence
    assert _is_computation("5") and not _is_computation("y \\times 4")
    assert _answer_candidate(" is 5\nand 6\nand 7") == "5"  # the first line after "answer" only
    assert _answer_candidate(" is " + "9" * 200) == "9" * 200  # the bound is inclusive
    assert _answer_candidate(" is seven apples") == "seven apples"  # two words are not yet prose
    assert _final_sentence("one\ntwo\nthree 3") == "three 3"
    assert _final_sentence("Answer is X") == "Answer is X"
    assert _final_sentence("! 5") == "5"
    assert _last_number("Then 3 = 1 + 2 = 3") == "3"  # the value after the last "="
