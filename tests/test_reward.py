"""Tests of eapo.reward: extraction, gold normalisation, math-verify checking, hacking guard, isolation."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest

from eapo.reward import (
    FALLBACKS,
    STALL_GRACE_S,
    Extraction,
    RewardResult,
    RewardScorer,
    accuracy,
    extract_answer,
    extraction_rate,
    normalize_gold,
    score_one,
)

TIMEOUT_S = 2.0
BENCH = Path(__file__).resolve().parents[1].parent / "shared/data/benchmarks"


@pytest.fixture(scope="module")
def scorer():
    """One warm pool for the module: worker start-up (importing sympy) costs seconds on 2 shared cores."""
    with RewardScorer(timeout_s=TIMEOUT_S, workers=2) as s:
        s.start()
        yield s


# -- extraction ------------------------------------------------------------------------------------------------------


def test_last_boxed_wins_and_nested_braces():
    assert extract_answer(r"first \boxed{1}, finally \boxed{\frac{1}{2}}.") == Extraction(
        r"\frac{1}{2}", "boxed"
    )
    assert extract_answer(r"\boxed{\sqrt{\frac{a}{b}}}").answer == r"\sqrt{\frac{a}{b}}"
    assert extract_answer(r"so \fbox{7} is it") == Extraction("7", "boxed")
    assert extract_answer(r"\boxed{1} then \fbox{2}").answer == "2"
    # an escaped brace is not a group delimiter
    assert extract_answer(r"\boxed{\{1, 2\}}").answer == r"\{1, 2\}"


def test_unbalanced_box_is_skipped_without_error():
    assert extract_answer(r"\boxed{3} and then \boxed{4").answer == "3"
    assert extract_answer(r"\boxed{4 and nothing closes") == Extraction("4", "last_number")
    assert extract_answer(r"\boxed{4 and nothing closes", fallback="none") == Extraction(None, "none")
    deep = "\\boxed{" * 10000
    t0 = time.perf_counter()
    assert extract_answer(deep) == Extraction(None, "none")
    assert time.perf_counter() - t0 < 1.0  # linear scan, no quadratic rescans


def test_answer_is_and_last_number_fallbacks():
    assert extract_answer("Adding them up. The answer is 42.") == Extraction("42", "answer_is")
    assert extract_answer("Final answer: $\\frac{3}{4}$") == Extraction(r"\frac{3}{4}", "answer_is")
    assert extract_answer("The answer is 3.5.", fallback="answer_is") == Extraction("3.5", "answer_is")
    assert extract_answer("So she has 1,234 apples in total") == Extraction("1234", "last_number")
    assert extract_answer("The temperature drops to -7 degrees") == Extraction("-7", "last_number")
    assert extract_answer("It costs 12.75 dollars") == Extraction("12.75", "last_number")
    assert extract_answer("She ate 3/4 of it") == Extraction("3/4", "last_number")
    # the final sentence states no single answer: after its last "=" comes an expression (binary minus, not a sign)
    assert extract_answer("10 - 3 = 7 and 5-2") == Extraction(None, "none")
    assert extract_answer("So 10 - 3 = 7") == Extraction("7", "last_number")
    # answer_is only: a bare number is not taken
    assert extract_answer("It costs 12 dollars", fallback="answer_is") == Extraction(None, "none")


def test_fallback_none_and_registry():
    assert extract_answer("The answer is 42.", fallback="none") == Extraction(None, "none")
    assert extract_answer(r"it is \boxed{42}", fallback="none") == Extraction("42", "boxed")
    assert set(FALLBACKS) == {"answer_is", "last_number", "none"}
    with pytest.raises(ValueError):
        extract_answer("42", fallback="first_number")
    with pytest.raises(ValueError):
        RewardScorer(fallback="bogus")


def test_normalize_gold():
    assert normalize_gold(27.0) == "27"
    assert normalize_gold("27.0") == "27"
    assert normalize_gold(-1.0) == "-1"
    assert normalize_gold(2.5) == "2.5"
    assert normalize_gold("1,234") == "1234"
    assert normalize_gold("She sold them all.\n#### 1,234") == "1234"
    assert normalize_gold("$5$") == "5"
    assert normalize_gold("\\$18.90") == "18.9"
    assert normalize_gold(r"\frac{3}{4}") == r"\frac{3}{4}"
    assert normalize_gold(r"\text{(C)}") == r"\text{(C)}"
    assert normalize_gold(r"\boxed{\frac{1}{2}}") == r"\frac{1}{2}"


# -- checking real benchmark answer formats -------------------------------------------------------------------------

CORRECT = [
    ("The total is 1234.", "#### 1,234"),  # GSM8K gold with commas, fast path
    (r"So \boxed{1,234}", "1234"),
    (r"\boxed{0.75}", r"\frac{3}{4}"),  # MATH fraction
    ("The answer is 3/4.", r"\frac{3}{4}"),
    (r"\boxed{\sqrt{12}}", r"2\sqrt{3}"),  # radicals
    (r"\boxed{(-\infty,3]}", r"(-\infty, 3]"),  # interval
    (r"\boxed{\text{(C)}}", r"\text{(C)}"),
    (r"\boxed{C}", r"\text{(C)}"),
    (r"\boxed{\text{Monday}}", r"\text{Monday}"),
    (r"\boxed{x^5 - x^4 + x^3 - x^2 + x - 1}", "x^5 - x^4 + x^3 - x^2 + x - 1"),  # not a power tower
    (r"\boxed{e^{-x^2}}", r"e^{-x^{2}}"),
    ("They meet after 27 miles", 27.0),  # AMC float gold
    (r"\boxed{27}", "27.0"),
]
WRONG = [
    ("The total is 1235.", "#### 1,234"),
    (r"\boxed{0.7}", r"\frac{3}{4}"),
    (r"\boxed{\sqrt{13}}", r"2\sqrt{3}"),
    (r"\boxed{(-\infty,3)}", r"(-\infty, 3]"),
    (r"\boxed{\text{(D)}}", r"\text{(C)}"),
    (r"\boxed{\text{Tuesday}}", r"\text{Monday}"),
    (r"\boxed{26}", 27.0),
]


def test_benchmark_formats_correct_and_wrong(scorer):
    responses = [r for r, _ in CORRECT + WRONG]
    golds = [g for _, g in CORRECT + WRONG]
    results = scorer.score(responses, golds)
    got = [r.reward for r in results]
    assert got == [1.0] * len(CORRECT) + [0.0] * len(WRONG), list(
        zip(responses, got, [r.failure for r in results])
    )
    assert all(r.failure is None for r in results)
    assert accuracy(results) == pytest.approx(len(CORRECT) / len(results))
    assert extraction_rate(results) == 1.0


def test_reward_hacking_restated_question_scores_zero(scorer):
    r = scorer.score_one("26 * 11", "286")
    assert r.reward == 0.0 and r.extracted is None and r.failure == "no_answer"  # two numbers: no final answer
    # a boxed unevaluated expression for a numeric gold is refused too (math-verify alone would say 286 == 26*11)
    r = scorer.score_one(r"\boxed{26 \times 11}", "286")
    assert r.reward == 0.0 and r.failure == "unevaluated_expression"
    r = scorer.score_one("The answer is 26 * 11.", "286")
    assert r.reward == 0.0 and r.failure == "unevaluated_expression"
    assert scorer.score_one(r"\boxed{286}", "286").reward == 1.0


# -- pathological inputs, isolation ----------------------------------------------------------------------------------


def test_pathological_batch_completes_with_reasons(scorer, caplog):
    cases = [
        (r"\boxed{100000000!}", "1", {"timeout"}),  # math-verify's parse hangs on it
        (r"\boxed{9^9^9^9^9}", "1", {"answer_too_complex"}),  # power towers never reach sympy
        (r"\boxed{9^{9^{9^{9^9}}}}", "1", {"answer_too_complex"}),
        ("x" * 1_000_000, "5", {"too_long"}),
        (
            r"\boxed{3} \boxed{4" + "}" * 3 + "{" * 50,
            "7",
            {None},
        ),  # unbalanced: last balanced box is 3, wrong
        ("\\boxed{" * 10000, "1", {"too_long"}),  # 70k chars: cut to 20k, still nothing balanced
        ("\\boxed{" * 2000, "1", {"no_answer"}),  # under max_chars: nothing balanced
        (r"\boxed{" + "{" * 3000 + "1" + "}" * 3000 + "}", "1", {"answer_too_complex"}),
        (b"\xff\xfe\xfa garbage", "1", {"invalid_utf8"}),
        ("", "1", {"no_answer"}),
        (None, "1", {"no_answer"}),
    ]
    caplog.set_level(logging.INFO, logger="eapo.reward")
    t0 = time.perf_counter()
    results = scorer.score([c[0] for c in cases], [c[1] for c in cases])
    wall = time.perf_counter() - t0
    assert wall < 3 * TIMEOUT_S + 5.0, wall
    for (resp, _, reasons), r in zip(cases, results):
        assert r.reward == 0.0, (resp if resp is None else resp[:40], r)
        assert r.failure in reasons, (resp if resp is None else resp[:40], r)
    assert "timeout" in caplog.text and "too_long" in caplog.text and "invalid_utf8" in caplog.text
    # the pool recovered: the killed worker was replaced and still scores
    assert scorer.score_one(r"\boxed{\sqrt{12}}", r"2\sqrt{3}").reward == 1.0
    assert _wait_for(lambda: len(scorer.worker_pids) == 2)  # pebble replaces a killed worker in the background


def test_long_response_with_answer_at_end_and_bad_bytes_still_scored(scorer):
    big = "blah " * 200_000 + r"so \boxed{5}"
    r = scorer.score_one(big, "5")
    assert r == RewardResult(1.0, "5", "boxed", None)
    r = scorer.score_one(b"\xff bad byte, answer \\boxed{5}", "5")
    assert r.reward == 1.0 and r.failure == "invalid_utf8"


def test_order_and_determinism_with_two_workers(scorer):
    n = 16
    golds = [rf"\frac{{{k}}}{{{k + 1}}}" for k in range(1, n + 1)]
    responses = [
        rf"\boxed{{\frac{{{2 * k}}}{{{2 * k + 2}}}}}" if k % 3 else r"\boxed{7}" for k in range(1, n + 1)
    ]
    first = scorer.score(responses, golds)
    assert [r.reward for r in first] == [0.0 if k % 3 == 0 else 1.0 for k in range(1, n + 1)]
    assert [r.extracted for r in first] == [resp[len("\\boxed{") : -1] for resp in responses]
    assert scorer.score(responses, golds) == first
    with pytest.raises(ValueError):
        scorer.score(["1"], [])


def test_scoring_from_a_thread(scorer):
    """Prefect runs tasks in threads: math-verify's signal.alarm would fail there; ours does not use signals."""
    out: list = []
    th = threading.Thread(target=lambda: out.append(scorer.score([r"\boxed{\sqrt{8}}"], [r"2\sqrt{2}"])))
    th.start()
    th.join(60)
    assert out and out[0][0].reward == 1.0


def _wait_for(cond, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def _kill_workers_repeatedly(scorer, stop: threading.Event, every: float = 0.3) -> set[int]:
    """Kill every worker of the pool each `every` seconds until `stop` is set; returns the pids killed."""
    killed: set[int] = set()
    while not stop.wait(every):
        for pid in scorer.worker_pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                pass
    return killed


def test_item_whose_worker_keeps_dying_is_retried_once_then_reported(scorer):
    """A worker killed under an item is not the item's fault the first time: it is retried once. Killed again, the
    item gets worker_crashed; the killed workers are replaced and reaped, and the pool still scores."""
    scorer.start()
    stop, killed = threading.Event(), set()
    th = threading.Thread(target=lambda: killed.update(_kill_workers_repeatedly(scorer, stop)))
    # A replacement pool's start-up is not grading time: it is bounded by startup_timeout_s on its own, and the killer
    # also kills the new workers while they start (on a loaded machine that can wedge the start-up wait itself).
    starting = []
    ready = scorer._ready_pool

    def timed_ready():
        t = time.perf_counter()
        try:
            return ready()
        finally:
            starting.append(time.perf_counter() - t)

    scorer._ready_pool = timed_ready
    th.start()
    try:
        t0 = time.perf_counter()
        results = scorer.score([r"\boxed{100000000!}", r"\boxed{200000000!}"], ["1", "2"])  # both hang
        wall = time.perf_counter() - t0
    finally:
        stop.set()
        th.join()
        del scorer._ready_pool
    assert [r.failure for r in results] == ["worker_crashed", "worker_crashed"]
    assert [r.reward for r in results] == [0.0, 0.0]
    # died twice (kills every 0.3 s); at worst a pool wedged by a kill inside pebble's channel lock is replaced
    assert wall - sum(starting) < TIMEOUT_S + STALL_GRACE_S + 2.0, (wall, starting)
    assert all(s <= scorer.startup_timeout_s + 1.0 for s in starting), starting
    assert scorer.score_one(r"\boxed{\frac{2}{4}}", r"\frac12").reward == 1.0
    assert killed and not killed & set(scorer.worker_pids)
    for pid in killed:  # killed and reaped (a zombie would still accept signal 0)
        assert _wait_for(lambda pid=pid: not _alive(pid))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_worker_killed_once_under_an_item_retries_it(scorer):
    """One death is retried: the hanging item then ends by its own timeout, not as worker_crashed."""
    pids = scorer.start().worker_pids

    def killer():
        time.sleep(0.5)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    th = threading.Thread(target=killer)
    th.start()
    results = scorer.score([r"\boxed{100000000!}", r"\boxed{200000000!}"], ["1", "2"])  # both hang
    th.join()
    assert [r.failure for r in results] == ["timeout", "timeout"]
    assert not set(pids) & set(scorer.worker_pids)


def test_worker_that_died_idle_costs_no_item(scorer):
    """Issue 12: a worker killed while idle made the next correct answer score 0 as worker_crashed. With pebble,
    all workers dying idle marks the pool broken ("All workers expired"): the scorer replaces it, and the items
    are graded normally."""
    pids = scorer.start().worker_pids
    assert len(pids) == 2
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    assert _wait_for(lambda: not any(_alive(p) for p in pids))
    results = scorer.score([r"\boxed{\sqrt{12}}", r"\boxed{\frac{3}{6}}"], [r"2\sqrt{3}", r"\frac12"])
    assert [(r.reward, r.failure) for r in results] == [(1.0, None), (1.0, None)]


def test_close_terminates_workers_no_zombies():
    s = RewardScorer(
        timeout_s=TIMEOUT_S, workers=1, mp_context="spawn"
    )  # the module fixture covers forkserver
    with s:
        assert (
            s.score_one(r"\boxed{\sqrt{4}}", "2").reward == 1.0
        )  # fast path does not need it; math-verify does
        assert s.score_one(r"\boxed{\sqrt{9}}", r"\sqrt{9}").reward == 1.0
        pids = s.worker_pids
        assert len(pids) == 1
        assert pids[0] in {p.pid for p in multiprocessing.active_children()}
    assert s.worker_pids == []
    assert pids[0] not in {p.pid for p in multiprocessing.active_children()}
    with pytest.raises(ProcessLookupError):  # reaped, not a zombie
        os.kill(pids[0], 0)
    with pytest.raises(RuntimeError):
        s.score(["1"], ["1"])


def test_score_one_leaves_no_worker_behind():
    """score_one without a scorer grades in a temporary one-worker pool (extraction runs under the timeout too)
    and closes it before returning."""
    before = {p.pid for p in multiprocessing.active_children()}
    assert score_one("The answer is 1,234.", "#### 1,234") == RewardResult(1.0, "1234", "answer_is", None)
    assert score_one("nothing here", "3", fallback="none").failure == "no_answer"
    assert {p.pid for p in multiprocessing.active_children()} == before


def test_helpers_on_empty():
    assert accuracy([]) == 0.0 and extraction_rate([]) == 0.0
    rs = [RewardResult(1.0, "1", "boxed"), RewardResult(0.0, None, "none", "no_answer")]
    assert accuracy(rs) == 0.5 and extraction_rate(rs) == 0.5


# -- the shared benchmark files ---------------------------------------------------------------------------------------


def _read_jsonl(path: Path) -> list[dict]:
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.mark.skipif(
    not (BENCH / "math500/test.jsonl").exists() or not (BENCH / "amc23/test.jsonl").exists(),
    reason=f"shared benchmark files not found under {BENCH}",
)
def test_benchmark_golds_verify_against_themselves(scorer):
    math500 = _read_jsonl(BENCH / "math500/test.jsonl")
    amc23 = _read_jsonl(BENCH / "amc23/test.jsonl")
    assert len(amc23) == 40
    golds = [row["answer"] for row in random.Random(0).sample(math500, 30)] + [row["answer"] for row in amc23]
    responses = [f"The final answer is \\boxed{{{normalize_gold(g)}}}" for g in golds]
    results = scorer.score(responses, golds)
    bad = [(g, r) for g, r in zip(golds, results) if r.reward != 1.0]
    assert not bad, bad


def test_math_verify_timeouts_disabled_so_it_runs_in_threads():
    """check_answer calls math-verify in-process with parsing_timeout=None / timeout_seconds=None: with its default
    signal.alarm timeouts it raises ValueError outside the main thread."""
    from eapo.reward import check_answer

    out: list = []
    th = threading.Thread(target=lambda: out.append(check_answer(r"\sqrt{12}", r"2\sqrt{3}")))
    th.start()
    th.join(60)
    assert out == [True]
