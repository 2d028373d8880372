"""Outcome rewards for math RLVR: extract the final answer, check it against the gold answer.

Pipeline for one (response, gold) pair
--------------------------------------
1. **Coerce** the response: ``str`` as is; ``bytes`` decoded as UTF-8 with replacement (undecodable bytes are
   recorded as ``"invalid_utf8"`` but the text is still scored); ``None`` is an empty response.
2. **Truncate** to the last ``max_chars`` characters. The final answer is at the end of a response, so cutting
   from the front keeps it. ``"too_long"`` is recorded only when nothing could be extracted from what remains.
3. **Extract** the final answer (:func:`extract_answer`): the last ``\\boxed{...}`` / ``\\fbox{...}`` (a linear
   brace-matching scan; unbalanced boxes are skipped), else a configurable fallback (:data:`FALLBACKS`).
4. **Check** the extracted answer only, against :func:`normalize_gold` of the gold answer:

   - *fast path*: when both are plain decimal numbers (``"1,234"``, ``"-3"``, ``"27.0"``) they are compared
     exactly with :class:`decimal.Decimal` in the calling process. No worker, no sympy.
   - otherwise math-verify, gold first: ``verify(parse(gold), parse(pred))``, both wrapped in ``\\boxed{}`` so that
     math-verify parses them as LaTeX/expressions. math-verify's own timeouts use ``signal.alarm`` (main thread
     only), so they are **disabled** (``parse(..., parsing_timeout=None)``, ``verify(..., timeout_seconds=None)``,
     the parameters math-verify 0.9.0 offers) and the check runs in a worker **process** that this module kills
     when it exceeds ``timeout_s``.

Reward hacking guard
--------------------
math-verify evaluates expressions: handed a whole response that merely restates the question, e.g. ``"26 * 11"``
for gold ``286``, it finds ``26*11 == 286`` and scores it correct (seen on this project, DESIGN §8). So the whole
response is **never** given to math-verify; only the extracted final answer is. For ``"26 * 11"`` the extracted
answer is the last number, ``11``, which is wrong. In addition, when the gold answer is a plain number, an extracted
answer that is still an unevaluated arithmetic expression between numbers (``26 \\times 11``, ``3 + 4``) scores 0
with reason ``"unevaluated_expression"`` (``reject_unevaluated=True``, the default): a final answer to a numeric
question must be the number. Fractions and powers (``3/4``, ``\\frac{3}{4}``, ``2^{10}``) are not affected.

Failure reasons (``RewardResult.failure``)
------------------------------------------
``None`` means the item was scored normally (right or wrong). Otherwise one of: ``"no_answer"``, ``"too_long"``,
``"invalid_utf8"`` (kept even when the decoded answer turns out right), ``"invalid_gold"``,
``"unevaluated_expression"``, ``"answer_too_complex"`` (an extracted answer longer than ``max_answer_chars``,
nested deeper than ``max_answer_depth``, or a numeric power tower such as ``9^9^9^9^9``: refused before it can stall
sympy), ``"timeout"``, ``"worker_crashed"``,
``"parse_error: ..."``. Every failure is logged on ``logging.getLogger("eapo.reward")``.

Isolation
---------
:class:`RewardScorer` keeps a small pool of its own ``multiprocessing.Process`` workers (``forkserver`` context
by default, ``spawn`` on request; never ``fork``: the trainer has torch threads), each talking over a ``Pipe``. A job
past its deadline gets reward 0 with ``"timeout"``; its worker is killed (SIGKILL), reaped and replaced, and the rest
of the batch goes on. A worker that dies gives ``"worker_crashed"``. No signals are used in the calling process, so scoring works from
any thread (e.g. a Prefect task runner thread). ``close()`` (or leaving the ``with`` block) stops, kills if needed and
joins every worker, so no zombies are left.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = [
    "FALLBACKS",
    "Extraction",
    "RewardResult",
    "RewardScorer",
    "accuracy",
    "check_answer",
    "extract_answer",
    "extraction_rate",
    "normalize_gold",
    "score_one",
]

logger = logging.getLogger("eapo.reward")

#: Fallback rules of :func:`extract_answer` when the response has no usable ``\boxed{}``.
#: ``"answer_is"``: "the answer is X" / "answer: X"; ``"last_number"``: answer_is, else the last number;
#: ``"none"``: boxed only.
FALLBACKS: tuple[str, ...] = ("answer_is", "last_number", "none")

# ----------------------------------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Extraction:
    """The extracted final answer and the rule that found it (``"boxed"``, ``"answer_is"``, ``"last_number"``,
    or ``"none"`` with ``answer=None``)."""

    answer: str | None
    method: str


@dataclass(frozen=True)
class RewardResult:
    """Outcome of scoring one response. ``reward`` is 0.0 or 1.0; ``failure`` is ``None`` for a normal verdict,
    else the reason (see the module docstring)."""

    reward: float
    extracted: str | None
    method: str
    failure: str | None = None


def extraction_rate(results: Sequence[RewardResult]) -> float:
    """Share of results with an extracted answer (0.0 for an empty sequence)."""
    if not results:
        return 0.0
    return sum(r.extracted is not None for r in results) / len(results)


def accuracy(results: Sequence[RewardResult]) -> float:
    """Mean reward (0.0 for an empty sequence)."""
    if not results:
        return 0.0
    return sum(r.reward for r in results) / len(results)


# ----------------------------------------------------------------------------------------------------------------------
# Extraction
# ----------------------------------------------------------------------------------------------------------------------

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")

# "the answer is X." / "answer: X" up to the end of the sentence (a period followed by space/end) or the line.
# Linear: the lazy group cannot cross a newline, and finditer never revisits consumed text.
_ANSWER_IS_RE = re.compile(
    r"\banswer\b(?:\s+is\b\s*:?|\s*:)[ \t*]*(?P<ans>[^\n]*?)[ \t]*(?:\.(?=\s|$)|\n|$)",
    re.IGNORECASE,
)

# A number: optional minus (not when it is a binary minus after a word/number), integer with optional thousands
# commas, optional decimals, optional "/denominator". The lookbehind stops matches starting inside a word or number.
_NUMBER_RE = re.compile(
    r"(?<![\w.])(?:(?<![\w)\]}])-)?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:/\d+(?:\.\d+)?)?"
)
_THOUSANDS_RE = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?\Z")
_PLAIN_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)\Z")
# Words of plain text (outside LaTeX commands): an "answer is" candidate with many of them is prose, not an answer.
_WORD_RE = re.compile(r"(?<!\\)\b[A-Za-z]{2,}\b")
_MAX_ANSWER_IS_WORDS = 2
_MAX_ANSWER_IS_CHARS = 200
# A binary arithmetic operator between two numbers: an unevaluated expression.
# A numeric power tower (9^9^9, 9^{9^{9}}): sympy would try to evaluate it. Polynomials and e^{-x^2} don't match.
_TOWER_RE = re.compile(r"\d\s*\^\s*\{?\s*\d+\s*\}?\s*\^|\^\s*\{[^{}]*\d\s*\^\s*\{?\s*\d")
_ARITH_RE = re.compile(r"\d\s*(?:[-+*×÷·]|\\times|\\cdot|\\div|\\ast)\s*[-+]?\s*\d")


def _match_braces(text: str) -> dict[int, int]:
    """Map each ``{`` index to its matching ``}`` index in one linear pass (``\\{`` / ``\\}`` are literal braces).
    Unmatched braces are simply absent from the map."""
    matches: dict[int, int] = {}
    stack: list[int] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            stack.append(i)
        elif c == "}" and stack:
            matches[stack.pop()] = i
        i += 1
    return matches


def _last_boxed(text: str) -> str | None:
    """Content of the last balanced, non-empty ``\\boxed{...}`` / ``\\fbox{...}``; ``None`` if there is none."""
    if "\\boxed" not in text and "\\fbox" not in text:
        return None
    starts = [m.end() - 1 for m in _BOX_RE.finditer(text)]  # index of each box's opening brace
    if not starts:
        return None
    braces = _match_braces(text)
    for open_idx in reversed(starts):
        close_idx = braces.get(open_idx)
        if close_idx is None:
            continue  # unbalanced box: skip it
        content = text[open_idx + 1 : close_idx].strip()
        if content:
            return content
    return None


def _clean_answer(ans: str) -> str:
    """Strip whitespace, markdown bold, ``$``/``\\(\\)`` math delimiters and trailing punctuation."""
    s = ans.strip()
    for _ in range(3):
        prev = s
        s = s.strip().strip("*").strip()
        if (s.startswith("\\(") and s.endswith("\\)")) or (s.startswith("\\[") and s.endswith("\\]")):
            s = s[2:-2]
        s = s.strip().strip("$").strip()
        s = s.rstrip(".,;:!").strip()
        if s == prev:
            break
    return s


def _answer_is(text: str) -> str | None:
    last: str | None = None
    for m in _ANSWER_IS_RE.finditer(text):
        cand = _clean_answer(m.group("ans"))
        if not cand or len(cand) > _MAX_ANSWER_IS_CHARS:
            continue
        if len(_WORD_RE.findall(re.sub(r"\\text\{[^{}]*\}", "T", cand))) > _MAX_ANSWER_IS_WORDS:
            continue  # prose ("the answer is that we compute 26*11"), not an answer
        last = cand.replace(",", "") if _THOUSANDS_RE.match(cand) else cand
    return last


def _last_number(text: str) -> str | None:
    last = None
    for m in _NUMBER_RE.finditer(text):
        last = m.group(0)
    if last is None:
        return None
    return last.replace(",", "")


def extract_answer(text: str, fallback: str = "last_number") -> Extraction:
    """Extract the final answer of a response.

    The last balanced ``\\boxed{...}`` (or ``\\fbox{...}``) wins; nested braces are matched by a linear scan, and an
    unbalanced box is skipped (never an exception, never regex backtracking). Without a box, ``fallback`` decides
    (one of :data:`FALLBACKS`): ``"answer_is"`` takes the last "answer is X" / "answer: X" up to the end of the
    sentence; ``"last_number"`` tries that, then the last number (thousands commas removed, negatives, decimals and
    ``a/b`` fractions kept); ``"none"`` stops. Raises ``ValueError`` for an unknown fallback.
    """
    if fallback not in FALLBACKS:
        raise ValueError(f"unknown fallback {fallback!r}; expected one of {FALLBACKS}")
    if not text:
        return Extraction(None, "none")
    boxed = _last_boxed(text)
    if boxed is not None:
        return Extraction(boxed, "boxed")
    if fallback in ("answer_is", "last_number"):
        ans = _answer_is(text)
        if ans is not None:
            return Extraction(ans, "answer_is")
    if fallback == "last_number":
        num = _last_number(text)
        if num is not None:
            return Extraction(num, "last_number")
    return Extraction(None, "none")


# ----------------------------------------------------------------------------------------------------------------------
# Gold answers and the fast numeric path
# ----------------------------------------------------------------------------------------------------------------------


def _format_decimal(s: str) -> str:
    """``"27.0"`` -> ``"27"``, ``"2.50"`` -> ``"2.5"``, ``"+3"`` -> ``"3"``, ``"-0"`` -> ``"0"``."""
    neg = s.startswith("-")
    s = s.lstrip("+-")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    s = s.lstrip("0") or "0"
    if s.startswith("."):
        s = "0" + s
    return "-" + s if neg and s != "0" else s


def normalize_gold(answer: Any) -> str:
    """Normalise a benchmark gold answer to the string the checker compares against.

    AMC floats (``27.0`` or ``"27.0"``) -> ``"27"``; GSM8K ``"1,234"`` (or a full GSM8K solution with
    ``"#### 1,234"``) -> ``"1234"``; ``$`` delimiters and ``\\$`` currency signs are stripped; a gold wrapped in a single
    ``\\boxed{}`` is unwrapped; any other LaTeX (MATH answers) is kept as is.
    """
    if answer is None:
        return ""
    if isinstance(answer, bool):
        return str(int(answer))
    if isinstance(answer, int):
        return str(answer)
    if isinstance(answer, float):
        if not math.isfinite(answer):
            return str(answer)
        return _format_decimal(format(Decimal(repr(answer)), "f"))
    s = str(answer)
    if "####" in s:
        s = s.rsplit("####", 1)[1]
    s = s.strip().replace("\\$", "")
    s = s.strip().strip("$").strip()
    whole_box = _BOX_RE.match(s)
    if whole_box is not None and _match_braces(s).get(whole_box.end() - 1) == len(s) - 1:
        s = s[whole_box.end() : -1].strip()  # a gold given as one \boxed{...}
    plain = _plain_number(s)
    if plain is not None:
        return _format_decimal(plain)
    return s


def _plain_number(s: str) -> str | None:
    """The number if ``s`` is a plain decimal number (thousands commas, ``$``, ``{,}`` allowed), else ``None``."""
    if len(s) > 64:
        return None
    t = s.strip().replace("\\$", "").strip("$").replace("{,}", ",").replace("\\!", "").strip()
    if _THOUSANDS_RE.match(t):
        t = t.replace(",", "")
    if _PLAIN_NUMBER_RE.match(t):
        return t
    return None


def _fast_numeric(gold: str, pred: str) -> bool | None:
    """Exact comparison when both sides are plain numbers; ``None`` when math-verify is needed."""
    g, p = _plain_number(gold), _plain_number(pred)
    if g is None or p is None:
        return None
    try:
        return Decimal(g) == Decimal(p)
    except InvalidOperation:
        return None


def _depth(s: str) -> int:
    depth = best = 0
    for c in s:
        if c in "{([":
            depth += 1
            best = max(best, depth)
        elif c in "})]":
            depth = max(depth - 1, 0)
    return best


# ----------------------------------------------------------------------------------------------------------------------
# math-verify (runs in worker processes)
# ----------------------------------------------------------------------------------------------------------------------

_MV: dict[str, Any] = {}


def _mv_check(gold: str, pred: str) -> tuple[float, str | None]:
    """math-verify, gold first, both wrapped in ``\\boxed{}``; math-verify's signal timeouts disabled."""
    if not _MV:
        from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

        _MV.update(
            parse=parse,
            verify=verify,
            config=[LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()],
        )
    parse, verify, config = _MV["parse"], _MV["verify"], _MV["config"]
    g = parse("\\boxed{" + gold + "}", extraction_config=config, parsing_timeout=None)
    if not g:
        return 0.0, "parse_error: gold unparseable"
    p = parse("\\boxed{" + pred + "}", extraction_config=config, parsing_timeout=None)
    if not p:
        return 0.0, "parse_error: answer unparseable"
    return (1.0 if verify(g, p, timeout_seconds=None) else 0.0), None


def check_answer(pred: str, gold: str) -> bool:
    """In-process check of an extracted answer against a gold answer (normalised here). Fast numeric path, else
    math-verify **without any timeout**: only for trusted inputs; use :class:`RewardScorer` for model outputs."""
    g = normalize_gold(gold)
    fast = _fast_numeric(g, pred)
    if fast is not None:
        return fast
    return _mv_check(g, pred)[0] == 1.0


def _worker_main(conn: multiprocessing.connection.Connection) -> None:
    """Worker loop: receive ``(job_id, gold, pred)``, send ``(job_id, reward, failure)``; ``None`` stops it."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    except (ValueError, OSError):
        pass
    logging.getLogger("math_verify").setLevel(
        logging.ERROR
    )  # "timeout disabled" warnings: we own the timeout
    try:
        _mv_check("1", "1")  # import math-verify/sympy before declaring readiness
    except Exception:  # each job reports its own error
        logging.getLogger("eapo.reward").debug("worker warm-up failed", exc_info=True)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            break
        if msg is None:
            break
        job_id, gold, pred = msg
        try:
            reward, failure = _mv_check(gold, pred)
        except BaseException as exc:  # noqa: BLE001 - RecursionError, sympy internals...
            reward, failure = 0.0, f"parse_error: {type(exc).__name__}: {str(exc)[:200]}"
        try:
            conn.send((job_id, reward, failure))
        except (EOFError, OSError, BrokenPipeError):
            break


# ----------------------------------------------------------------------------------------------------------------------
# Worker pool
# ----------------------------------------------------------------------------------------------------------------------


class _Worker:
    __slots__ = ("conn", "deadline", "job", "proc", "ready", "started")

    def __init__(self, ctx: Any) -> None:
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(
            target=_worker_main, args=(child_conn,), name="eapo-reward-worker", daemon=True
        )
        self.proc.start()
        child_conn.close()
        self.conn = parent_conn
        self.ready = False
        self.job: int | None = None
        self.deadline = 0.0
        self.started = time.monotonic()

    def stop(self, graceful: bool) -> None:
        if graceful and self.proc.is_alive():
            try:
                self.conn.send(None)
            except (OSError, ValueError):
                pass
            self.proc.join(0.5)
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5.0)
        try:
            self.conn.close()
        except OSError:
            pass
        try:
            self.proc.close()
        except ValueError:
            pass


def _shutdown(workers: list[_Worker]) -> None:
    while workers:
        workers.pop().stop(graceful=True)


def _default_mp_context() -> str:
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def _add_forkserver_preload() -> None:
    """Have the fork server import math-verify once, so that a new or replacement worker is a cheap fork of a clean,
    single-threaded process instead of a fresh interpreter importing sympy (seconds). Appends to the existing preload
    list (default ``["__main__"]``); it only takes effect if the fork server has not started yet."""
    from multiprocessing import forkserver

    current = list(getattr(forkserver._forkserver, "_preload_modules", None) or ["__main__"])
    wanted = [m for m in ("eapo.reward", "math_verify") if m not in current]
    if wanted:
        forkserver.set_forkserver_preload(current + wanted)


class RewardScorer:
    """Scores batches of responses against gold answers, with math-verify isolated in killable worker processes.

    ``timeout_s``: per-item budget of a math-verify check. ``workers``: size of the process pool (started lazily,
    only when an item needs math-verify). ``fallback``: see :func:`extract_answer`. ``max_chars``: responses are cut
    to their last ``max_chars`` characters. ``reject_unevaluated``: the reward hacking guard (module docstring).
    ``max_answer_chars`` / ``max_answer_depth``: bigger extracted answers are refused as ``"answer_too_complex"``.
    ``mp_context``: ``"forkserver"`` (default where available: the fork server is a fresh single-threaded process
    that preloads math-verify, so replacing a killed worker takes milliseconds) or ``"spawn"`` (each worker a fresh
    interpreter, seconds to import sympy); never ``"fork"`` (the trainer has torch threads). As with any
    non-fork start method, a script that creates a scorer needs the ``if __name__ == "__main__":`` guard.
    ``startup_timeout_s``: how long a new worker may take to import math-verify. ``cache_size``: verdicts kept
    across batches (identical pairs inside a batch are always checked once).

    Use as a context manager, or call :meth:`close`. Thread-safe (one batch at a time).
    """

    def __init__(
        self,
        timeout_s: float = 5.0,
        workers: int = 2,
        fallback: str = "last_number",
        max_chars: int = 20000,
        *,
        reject_unevaluated: bool = True,
        max_answer_chars: int = 1000,
        max_answer_depth: int = 50,
        mp_context: str | None = None,
        startup_timeout_s: float = 120.0,
        cache_size: int = 10000,
    ) -> None:
        if fallback not in FALLBACKS:
            raise ValueError(f"unknown fallback {fallback!r}; expected one of {FALLBACKS}")
        if workers < 1:
            raise ValueError("workers must be >= 1")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        if max_chars < 1:
            raise ValueError("max_chars must be >= 1")
        if mp_context is None:
            mp_context = _default_mp_context()
        if mp_context not in ("spawn", "forkserver"):
            raise ValueError("mp_context must be 'spawn' or 'forkserver' (fork is unsafe with torch threads)")
        self.timeout_s = float(timeout_s)
        self.workers = int(workers)
        self.fallback = fallback
        self.max_chars = int(max_chars)
        self.reject_unevaluated = reject_unevaluated
        self.max_answer_chars = max_answer_chars
        self.max_answer_depth = max_answer_depth
        self.startup_timeout_s = startup_timeout_s
        self.cache_size = cache_size
        self.mp_context = mp_context
        self._ctx = multiprocessing.get_context(mp_context)
        if mp_context == "forkserver":
            _add_forkserver_preload()
        self._pool: list[_Worker] = []
        self._cache: OrderedDict[tuple[str, str], tuple[float, str | None]] = OrderedDict()
        self._lock = threading.RLock()
        self._closed = False
        self._finalizer = weakref.finalize(self, _shutdown, self._pool)

    # -- lifecycle -----------------------------------------------------------------------------------------------------

    def __enter__(self) -> RewardScorer:  # noqa: PYI034 - Self needs Python 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop and join every worker (SIGKILL for one that does not stop). Idempotent."""
        with self._lock:
            self._closed = True
            self._finalizer()

    def start(self) -> RewardScorer:
        """Start all ``workers`` now and wait until each has imported math-verify (a warm-up; otherwise workers start
        lazily, on the first batch that needs math-verify). Returns ``self``."""
        with self._lock:
            if self._closed:
                raise RuntimeError("RewardScorer is closed")
            while len(self._pool) < self.workers:
                self._pool.append(_Worker(self._ctx))
            failures = 0
            while failures < 3 * self.workers:
                waiting = [w for w in self._pool if not w.ready]
                if not waiting:
                    break
                limit = min(w.started for w in waiting) + self.startup_timeout_s
                fired = set(
                    multiprocessing.connection.wait(
                        [w.conn for w in waiting], timeout=max(0.0, limit - time.monotonic())
                    )
                )
                for w in waiting:
                    if w.conn in fired:
                        try:
                            msg = w.conn.recv()
                        except (EOFError, OSError):
                            msg = None
                        if msg is not None and msg[0] == "ready":
                            w.ready = True
                            continue
                        failures += 1
                        self._replace(w)
                    elif time.monotonic() >= w.started + self.startup_timeout_s:
                        failures += 1
                        self._replace(w)
            if any(not w.ready for w in self._pool):
                logger.error("reward workers did not all start (%d failed attempts)", failures)
            return self

    @property
    def worker_pids(self) -> list[int]:
        """PIDs of the live worker processes (for monitoring)."""
        with self._lock:
            return [w.proc.pid for w in self._pool if w.proc.pid is not None]

    # -- scoring -------------------------------------------------------------------------------------------------------

    def score_one(self, response: str | bytes | None, gold: Any) -> RewardResult:
        return self.score([response], [gold])[0]

    def score(self, responses: Sequence[str | bytes | None], golds: Sequence[Any]) -> list[RewardResult]:
        """Score ``responses[i]`` against ``golds[i]``; results in input order."""
        if len(responses) != len(golds):
            raise ValueError(f"{len(responses)} responses but {len(golds)} golds")
        with self._lock:
            if self._closed:
                raise RuntimeError("RewardScorer is closed")
            results: list[RewardResult | None] = [None] * len(responses)
            pending: dict[tuple[str, str], list[tuple[int, Extraction, str | None]]] = {}
            for i, (resp, gold) in enumerate(zip(responses, golds)):
                res, job = self._prepare(resp, gold)
                if res is not None:
                    results[i] = res
                else:
                    key, ext, note = job
                    cached = self._cache.get(key)
                    if cached is not None:
                        self._cache.move_to_end(key)
                        results[i] = RewardResult(cached[0], ext.answer, ext.method, cached[1] or note)
                    else:
                        pending.setdefault(key, []).append((i, ext, note))
            if pending:
                keys = list(pending)
                verdicts = self._run(keys)
                for key, (reward, failure) in zip(keys, verdicts):
                    if failure not in ("timeout", "worker_crashed"):
                        self._cache[key] = (reward, failure)
                        if len(self._cache) > self.cache_size:
                            self._cache.popitem(last=False)
                    for i, ext, note in pending[key]:
                        results[i] = RewardResult(reward, ext.answer, ext.method, failure or note)
            out = [r for r in results if r is not None]
            assert len(out) == len(results)
            for i, r in enumerate(out):
                if r.failure is not None:
                    level = logging.WARNING if r.failure in ("timeout", "worker_crashed") else logging.INFO
                    shown = None if r.extracted is None else r.extracted[:80]
                    logger.log(
                        level,
                        "reward item %d: reward=%.0f reason=%s extracted=%r",
                        i,
                        r.reward,
                        r.failure,
                        shown,
                    )
            return out

    def _prepare(
        self, response: Any, gold: Any
    ) -> tuple[RewardResult | None, tuple[tuple[str, str], Extraction, str | None]]:
        """Everything cheap and in-process: coerce, truncate, extract, guards, fast path. Returns a final result,
        or the math-verify job ``(gold, pred)`` with the extraction and a note (``"invalid_utf8"``)."""
        note: str | None = None
        if response is None:
            text = ""
        elif isinstance(response, (bytes, bytearray, memoryview)):
            raw = bytes(response)
            limit = self.max_chars * 4
            if len(raw) > limit:
                raw = raw[-limit:]
                k = 0
                while k < 3 and k < len(raw) and 0x80 <= raw[k] <= 0xBF:  # drop a cut multi-byte character
                    k += 1
                raw = raw[k:]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("utf-8", errors="replace")
                note = "invalid_utf8"
        else:
            text = response if isinstance(response, str) else str(response)
        truncated = len(text) > self.max_chars
        if truncated:
            text = text[-self.max_chars :]
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates
            text = text.encode("utf-8", errors="replace").decode("utf-8")
            note = "invalid_utf8"

        ext = extract_answer(text, self.fallback)
        dummy = (("", ""), ext, note)
        if ext.answer is None:
            reason = note or ("too_long" if truncated else "no_answer")
            return RewardResult(0.0, None, ext.method, reason), dummy
        g = normalize_gold(gold)
        if not g:
            return RewardResult(0.0, ext.answer, ext.method, "invalid_gold"), dummy
        pred = ext.answer
        fast = _fast_numeric(g, pred)
        if fast is not None:
            return RewardResult(1.0 if fast else 0.0, pred, ext.method, note), dummy
        if self.reject_unevaluated and _plain_number(g) is not None and _ARITH_RE.search(pred):
            return RewardResult(0.0, pred, ext.method, "unevaluated_expression"), dummy
        if (
            len(pred) > self.max_answer_chars
            or _depth(pred) > self.max_answer_depth
            or _TOWER_RE.search(pred)
        ):
            return RewardResult(0.0, pred, ext.method, "answer_too_complex"), dummy
        return None, ((g, pred), ext, note)

    # -- the pool ------------------------------------------------------------------------------------------------------

    def _replace(self, w: _Worker) -> None:
        w.stop(graceful=False)
        idx = self._pool.index(w)
        self._pool[idx] = _Worker(self._ctx)

    def _run(self, jobs: list[tuple[str, str]]) -> list[tuple[float, str | None]]:
        """Run math-verify jobs on the pool with a per-job deadline; returns verdicts in job order."""
        n = len(jobs)
        out: list[tuple[float, str | None] | None] = [None] * n
        todo = deque(range(n))
        while len(self._pool) < min(self.workers, n):
            self._pool.append(_Worker(self._ctx))
        startup_failures = 0
        done = 0
        while done < n:
            # Dispatch to idle, ready workers.
            for w in self._pool:
                if todo and w.ready and w.job is None:
                    j = todo.popleft()
                    try:
                        w.conn.send((j, jobs[j][0], jobs[j][1]))
                    except (OSError, ValueError):
                        todo.appendleft(j)
                        self._replace(w)
                        continue
                    w.job = j
                    w.deadline = time.monotonic() + self.timeout_s
            # Wait for a result, a death, or the nearest deadline.
            now = time.monotonic()
            limits = [
                w.deadline if w.ready else w.started + self.startup_timeout_s
                for w in self._pool
                if w.job is not None or not w.ready
            ]
            wait_s = max(0.0, min(limits) - now) if limits else 0.05
            handles: list[Any] = [w.conn for w in self._pool] + [w.proc.sentinel for w in self._pool]
            fired = set(multiprocessing.connection.wait(handles, timeout=wait_s))
            for w in list(self._pool):
                if w.conn in fired:
                    try:
                        msg = w.conn.recv()
                    except (EOFError, OSError):
                        msg = None
                    if msg is None:
                        done += self._crashed(w, out)
                        if not w.ready:
                            startup_failures += 1
                        continue
                    if msg[0] == "ready":
                        w.ready = True
                        startup_failures = 0
                        continue
                    j, reward, failure = msg
                    if w.job == j and out[j] is None:
                        out[j] = (reward, failure)
                        done += 1
                    w.job = None
                elif w.proc.sentinel in fired:
                    done += self._crashed(w, out)
                    if not w.ready:
                        startup_failures += 1
            # Deadlines.
            now = time.monotonic()
            for w in list(self._pool):
                if w.job is not None and now >= w.deadline:
                    j = w.job
                    out[j] = (0.0, "timeout")
                    done += 1
                    w.job = None
                    self._replace(w)
                elif not w.ready and now >= w.started + self.startup_timeout_s:
                    startup_failures += 1
                    self._replace(w)
            if startup_failures >= 3 * self.workers:
                logger.error("reward workers fail to start; failing %d pending items", len(todo))
                while todo:
                    out[todo.popleft()] = (0.0, "worker_crashed")
                    done += 1
                startup_failures = 0
        return [o if o is not None else (0.0, "worker_crashed") for o in out]

    def _crashed(self, w: _Worker, out: list[Any]) -> int:
        j = w.job
        w.job = None
        self._replace(w)
        if j is not None and out[j] is None:
            out[j] = (0.0, "worker_crashed")
            return 1
        return 0


def score_one(
    response: str | bytes | None,
    gold: Any,
    *,
    scorer: RewardScorer | None = None,
    **scorer_kwargs: Any,
) -> RewardResult:
    """Score one response. Uses ``scorer`` when given; otherwise a temporary :class:`RewardScorer` built from
    ``scorer_kwargs`` (its worker starts only if math-verify is needed, and is closed before returning)."""
    if scorer is not None:
        return scorer.score_one(response, gold)
    scorer_kwargs.setdefault("workers", 1)
    with RewardScorer(**scorer_kwargs) as tmp:
        return tmp.score_one(response, gold)
