"""Outcome rewards for math RLVR: extract the final answer, check it against the gold answer.

Pipeline for one (response, gold) pair
--------------------------------------
1. **Coerce** the response (calling process, linear): ``str`` as is; ``bytes`` decoded as UTF-8 with replacement
   (undecodable bytes are recorded as ``"invalid_utf8"`` but the text is still scored); ``None`` is an empty response.
   The text is cut to its last ``max_chars`` characters (the final answer is at the end, so cutting from the front
   keeps it); ``"too_long"`` is recorded only when nothing could be extracted from what remains.
2. **Truncated responses** (the sampler stopped at the token limit, ``truncated=True``) score 0 with failure
   ``"truncated"`` by default, without grading: a response cut mid-sentence has no final answer, and crediting it
   rewards rambling (the convention of DAPO's overlong filtering). With ``score_truncated=True`` they are graded,
   but never by the last-number fallback.
3. Everything else runs **in a worker process, under the per-item timeout** (:func:`grade`): stray control
   characters and null bytes are dropped (:func:`clean_text`), the final answer is extracted
   (:func:`extract_answer`), the gold is normalised (:func:`normalize_gold`), and the two are compared: exactly
   with :class:`decimal.Decimal` when both read as numbers (:func:`parse_number`), else by math-verify.

Extraction (:func:`extract_answer`)
-----------------------------------
The last balanced, non-empty ``\\boxed{...}`` / ``\\fbox{...}`` (a linear brace-matching scan; unbalanced boxes are
skipped); else, with ``fallback`` ``"answer_is"`` or ``"last_number"``, the last "the answer is X" / "answer: X" up to
the end of its sentence (X with more than two words of prose is refused, except a leading number followed by words
without digits: "42 apples in total" -> ``42``); else, with ``"last_number"`` and only for a response that ended by
itself, the number of its **final sentence** (the last sentence of the last non-empty line, at most
:data:`MAX_FINAL_SENTENCE_CHARS` characters, or there is none): the value after its
last ``=`` if that is a number, else its only number; a final sentence with several numbers and no ``=`` has no
readable answer. An extracted answer of the form ``expr = value`` keeps only ``value`` when ``value`` is a number
("26*11 = 286" -> ``286``). No regex runs over the whole response with backtracking: the "answer is" rule looks at a
bounded window after each literal "answer", and the number scan is a linear pattern over one sentence.

Numbers (:func:`parse_number`)
------------------------------
``1234``, ``-3``, ``27.0``, ``.5``; thousands separators ``1,234``, ``1{,}234``, ``1\\,234``, ``1\\!234``,
``1 234`` with a no-break or thin space (groups of exactly three digits); ``$`` / ``\\$`` / ``€`` / ``£`` and
trailing units or currency words (``12 dollars``, ``12\\text{ cm}``, ``5 km/h`` is *not* a number); percentages
(``25\\%``, ``25%``, ``25 percent``); scientific notation ``1e3``, ``2.5E-3``, ``5.2\\times10^{3}``,
``5.2 \\cdot 10^3``. A percentage matches both its number and its fraction (``25%`` = 25 = 0.25), as math-verify
grades them. Signs matter: ``-5`` is not ``5``.

Reward hacking guards
---------------------
math-verify evaluates expressions: handed a whole response that restates the question, e.g. ``"26 * 11"`` for gold
``286``, it finds ``26*11 == 286``. So only the extracted final answer is ever given to it, and when the gold is a
plain number an extracted answer that is still an unevaluated arithmetic expression between numbers
(``26 \\times 11``, ``3 + 4``) or an equation (``2x + 3 = 5``: math-verify would compare its right side) scores 0
with ``"unevaluated_expression"`` (``reject_unevaluated=True``, the default); ``= value`` is only read off a
computation or an assignment (``26*11 = 286``, ``x = 5``), never off an equation in a variable. Scientific
notation is read as a number first, so ``5.2\\times10^{3}`` is not affected. A list of candidates ("3, 4 or 5")
is a set to math-verify and never equals a single number; a final sentence listing several numbers yields no
last-number answer at all.

Failure reasons (``RewardResult.failure``)
------------------------------------------
``None`` means the item was scored normally (right or wrong). Otherwise one of: ``"no_answer"``, ``"too_long"``,
``"truncated"``, ``"invalid_utf8"`` (kept even when the decoded answer turns out right), ``"invalid_gold"``,
``"unevaluated_expression"``, ``"answer_too_complex"`` (an extracted answer longer than ``max_answer_chars``,
nested deeper than ``max_answer_depth``, or a numeric power tower such as ``9^9^9^9^9``), ``"timeout"``,
``"worker_crashed"``, ``"parse_error: ..."``. Every failure is logged on ``logging.getLogger("eapo.reward")``.

Isolation
---------
:class:`RewardScorer` grades on a :class:`pebble.ProcessPool` (``forkserver`` context by default, ``spawn`` on
request; never ``fork``: the trainer has torch threads). Each item is one task with ``timeout_s``: pebble kills the
worker that overran and starts a replacement, and the item gets reward 0 with ``"timeout"``. A worker that dies
while running an item (a ``ProcessExpired``) may have been killed for a reason that has nothing to do with that
item (the OOM killer, an operator), so the item is **retried once**; it gets ``"worker_crashed"`` only if its
worker dies again. A worker that dies while idle costs no item. pebble can wedge or mark its pool broken when
workers die at the wrong moment (all idle workers dead; a worker killed while holding the task channel's lock):
when pebble reports the pool broken, or nothing has finished for ``timeout_s + STALL_GRACE_S``, the pool is replaced
and the unfinished items are resubmitted (their one retry). No signals
are used in the calling process, so scoring works from any thread (e.g. a Prefect task runner thread). ``close()``
(or leaving the ``with`` block) stops the pool and joins every worker, so no zombies are left.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import multiprocessing
import re
import signal
import threading
import time
import weakref
from collections import OrderedDict
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
    "clean_text",
    "extract_answer",
    "extraction_rate",
    "grade",
    "normalize_gold",
    "parse_number",
    "score_one",
]

logger = logging.getLogger("eapo.reward")

#: Fallback rules of :func:`extract_answer` when the response has no usable ``\boxed{}``.
#: ``"answer_is"``: "the answer is X" / "answer: X"; ``"last_number"``: answer_is, else the number of the final
#: sentence; ``"none"``: boxed only.
FALLBACKS: tuple[str, ...] = ("answer_is", "last_number", "none")

#: Extraction methods, as recorded in ``RewardResult.method`` and the ``extract_method`` column.
METHODS: tuple[str, ...] = ("boxed", "answer_is", "last_number", "none")

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
# Cleaning
# ----------------------------------------------------------------------------------------------------------------------

# C0 controls except tab and newline, DEL, C1 controls: dropped; \r becomes a newline; Unicode minus signs and
# dashes used as minus become "-"; zero-width spaces are dropped.
_CLEAN_TABLE: dict[int, int | None] = {c: None for c in (*range(0, 9), 11, 12, *range(14, 32), 127, *range(128, 160))}
_CLEAN_TABLE.update({13: 10, 0x2212: ord("-"), 0x2013: ord("-"), 0xFE63: ord("-"), 0xFF0D: ord("-"),
                     0x200B: None, 0xFEFF: None, 0x2060: None})


def clean_text(text: str) -> str:
    """Drop null bytes and other control characters (keeping tabs and newlines; ``\\r`` becomes a newline), and map
    Unicode minus signs to ``-``. Linear."""
    return text.translate(_CLEAN_TABLE)


# ----------------------------------------------------------------------------------------------------------------------
# Numbers
# ----------------------------------------------------------------------------------------------------------------------

_MAX_NUMBER_CHARS = 200
_MAX_EXPONENT = 10000
# All patterns below run on short strings (at most _MAX_NUMBER_CHARS) and have no nested quantifiers.
_UNIT_TEXT_RE = re.compile(r"\\(?:text|mbox|mathrm|textbf|operatorname)\s*\{([^{}]*)\}")
_UNIT_WORD_RE = re.compile(r"[A-Za-z]{2,20}\.?(?:\^\{?[23]\}?)?")
# Words that join or operate on numbers are never units: "5 or six", "5 pi", "2 times".
_NOT_UNITS = frozenset({"or", "and", "to", "plus", "minus", "times", "over", "by", "of", "from", "than", "not", "nor",
                        "pi", "sqrt", "ln", "log", "sin", "cos", "tan", "exp", "inf", "infty", "squared", "cubed",
                        "thousand", "million", "billion", "trillion", "hundred", "dozen", "half", "percent"})
_MAX_UNIT_WORDS = 3
_PERCENT_RE = re.compile(r"\s*(?:\\%|%|percent|per cent|pct)\Z", re.IGNORECASE)
_SCI_RE = re.compile(
    r"(?P<m>[+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*"
    r"(?:[eE](?P<e>[+-]?\d{1,6})|(?:\\times|\\cdot|×|·|\*|x)\s*10\s*\^\s*(?:\{\s*(?P<b>[+-]?\d{1,6})\s*\}|(?P<c>[+-]?\d{1,6})))\Z"
)
_POW10_RE = re.compile(r"10\s*\^\s*(?:\{\s*(?P<b>[+-]?\d{1,6})\s*\}|(?P<c>[+-]?\d{1,6}))\Z")
_THOUSANDS_RE = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?\Z")
_PLAIN_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)\Z")


@dataclass(frozen=True)
class Number:
    """A parsed number: its exact value and whether it was written as a percentage."""

    value: Decimal
    percent: bool = False


def _strip_delimiters(s: str) -> str:
    """Strip whitespace, markdown bold, ``$``/``\\(\\)``/``\\[\\]`` math delimiters and trailing ``.,;:``."""
    s = s.strip()
    for _ in range(4):
        prev = s
        s = s.strip().strip("*").strip()
        if (s.startswith("\\(") and s.endswith("\\)")) or (s.startswith("\\[") and s.endswith("\\]")):
            s = s[2:-2]
        s = s.strip().strip("$").strip()
        s = s.rstrip(".,;:").strip()  # not "!": inside a box it is a factorial; a sentence end is cut before
        if s == prev:
            break
    return s


def parse_number(s: str) -> Number | None:
    """Read ``s`` as one number (see the module docstring for the accepted forms), or ``None``. Exact: the value is
    a :class:`~decimal.Decimal` built from the digits written, never a float."""
    if not s or len(s) > _MAX_NUMBER_CHARS:
        return None
    t = _strip_delimiters(clean_text(s))
    t = t.replace("\\left", "").replace("\\right", "").replace("\\displaystyle", "")
    t = _UNIT_TEXT_RE.sub(lambda m: " " + m.group(1) + " ", t)  # \text{ dollars} -> " dollars "
    t = t.replace("\\$", "").replace("$", "").replace("€", "").replace("£", "").replace("¥", "")
    t = t.replace("{,}", ",").replace("\\,", ",").replace("\\!", ",").replace("\u00a0", ",").replace("\u202f", ",")
    t = t.replace("\\ ", " ").replace("~", " ").strip()
    t = _strip_delimiters(t)
    percent = False
    m = _PERCENT_RE.search(t)
    if m is not None:
        percent, t = True, t[: m.start()].strip()
    else:
        head = _strip_unit_words(t)
        if head is not None:
            t = head
            m = _PERCENT_RE.search(t)
            if m is not None:
                percent, t = True, t[: m.start()].strip()
    t = t.strip()
    if _THOUSANDS_RE.match(t):
        t = t.replace(",", "")
    try:
        if _PLAIN_NUMBER_RE.match(t):
            return Number(Decimal(t), percent)
        sci = _SCI_RE.match(t)
        if sci is not None:
            exp = sci.group("e") or sci.group("b") or sci.group("c")
            if abs(int(exp)) > _MAX_EXPONENT:
                return None
            return Number(Decimal(f"{sci.group('m')}e{int(exp)}"), percent)
        pow10 = _POW10_RE.match(t)
        if pow10 is not None:
            exp = pow10.group("b") or pow10.group("c")
            if abs(int(exp)) > _MAX_EXPONENT:
                return None
            return Number(Decimal(f"1e{int(exp)}"), percent)
    except (InvalidOperation, ValueError):
        return None
    return None


def _strip_unit_words(t: str) -> str | None:
    """``"12 dollars"`` -> ``"12"``, ``"3 apples each"`` -> ``"3"``: the number before up to three trailing unit or
    currency words (two letters or more, separated by spaces, not a connective or a math word), else ``None``."""
    words = t.split()
    k = 0
    while len(words) > 1 and k < _MAX_UNIT_WORDS:
        w = words[-1]
        if not _UNIT_WORD_RE.fullmatch(w) or w.rstrip(".").lower() in _NOT_UNITS:
            break
        words.pop()
        k += 1
    if k == 0 or not words[-1][-1:].isdigit() and not words[-1].endswith("%"):
        return None
    return " ".join(words)


def _numbers_equal(gold: Number, pred: Number) -> bool:
    """Exact equality; a percentage on either side also matches its fraction (25% = 25 = 0.25)."""
    if gold.value == pred.value:
        return True
    if pred.percent and not gold.percent:
        return gold.value == pred.value.scaleb(-2)
    if gold.percent and not pred.percent:
        return pred.value == gold.value.scaleb(-2)
    return False


# ----------------------------------------------------------------------------------------------------------------------
# Extraction
# ----------------------------------------------------------------------------------------------------------------------

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_WORD_RE = re.compile(r"\banswer\b", re.IGNORECASE)
# What may follow "answer": " is", " is:", ":", "**:" (anchored, on a bounded window).
_ANSWER_LEAD_RE = re.compile(r"(?:\*{0,2}\s+is\b\s*:?|\*{0,2}\s*:)[ \t*]*", re.IGNORECASE)
# A number token (linear: the lookbehinds stop matches starting inside a word or a number, no nested quantifiers
# can backtrack). Optional sign (not a binary minus after a word/bracket), thousands commas, decimals, "a/b", and a
# trailing percent sign.
_NUMBER_RE = re.compile(
    r"(?<![\w.])(?:(?<![\w)\]}])-)?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:/\d+(?:\.\d+)?)?"
    r"(?:[eE][-+]?\d{1,6}(?!\w)"
    r"|[ \t]*(?:\\times|\\cdot|×)[ \t]*10[ \t]*\^[ \t]*(?:\{[ \t]*-?\d{1,6}[ \t]*\}|-?\d{1,6}))?"
    r"(?:\\?%)?"
)
# Words of plain text (outside LaTeX commands): an "answer is" candidate with many of them is prose, not an answer.
_WORD_RE = re.compile(r"(?<!\\)\b[A-Za-z]{2,}\b")
_MAX_ANSWER_IS_WORDS = 2
#: The last-number fallback reads a final sentence up to this long; a longer one is a run-on paragraph.
MAX_FINAL_SENTENCE_CHARS = 200
_MAX_ANSWER_IS_CHARS = 200
_ANSWER_WINDOW = 2 * _MAX_ANSWER_IS_CHARS
_LEADING_NUMBER_RE = re.compile(r"[-+]?\$?\s*\d[\d,]*(?:\.\d+)?(?:\s*(?:\\%|%))?")
_DIGIT_RE = re.compile(r"\d")
# A binary arithmetic operator between two numbers: an unevaluated expression.
_ARITH_RE = re.compile(r"\d\s*(?:[-+*×÷·]|\\times|\\cdot|\\div|\\ast)\s*[-+]?\s*\d")
# A numeric power tower (9^9^9, 9^{9^{9}}): sympy would try to evaluate it. Polynomials and e^{-x^2} don't match.
_TOWER_RE = re.compile(r"\d\s*\^\s*\{?\s*\d+\s*\}?\s*\^|\^\s*\{\s*\d+\s*\^")


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


def _sentence_end(s: str) -> int:
    """Index where the first sentence of ``s`` ends: a ``.``/``!``/``?`` followed by whitespace or the end (so
    ``3.5`` does not end it), else the end of ``s``."""
    for i, c in enumerate(s):
        if c in ".!?" and (i + 1 == len(s) or s[i + 1].isspace()):
            return i
    return len(s)


_COMPUTATION_CHARS = frozenset("0123456789 \t+-*/×÷·^().,{}[]=$%")
_LATEX_OPERATORS_RE = re.compile(r"\\(?:times|cdot|div|d?frac|left|right|,|!)")
_VARIABLE_RE = re.compile(r"\\?[A-Za-z](?:_\{?\w+\}?)?")


def _is_computation(lhs: str) -> bool:
    """Whether the text before an ``=`` ends in a computation whose result the ``=`` states ("26*11", "She makes
    9 * 2", "x" as in "x = 5"), and not an equation in a variable ("2x + 3", "5x - 7y + 11z + 4"), whose right side
    is no answer. Scans back over digits, operators and brackets; a variable right before them (a single letter, not
    a word of prose) makes it an equation."""
    t = _LATEX_OPERATORS_RE.sub("*", lhs).rstrip()
    i = len(t)
    while i > 0 and t[i - 1] in _COMPUTATION_CHARS:
        i -= 1
    comp, rest = t[i:], t[:i]
    if not any(c.isdigit() for c in comp):
        return _VARIABLE_RE.fullmatch(t.strip()) is not None  # "x = 5"
    j = len(rest)
    while j > 0 and rest[j - 1].isalpha():
        j -= 1
    word = rest[j:]
    return len(word) != 1  # nothing before the computation, or a word of prose; not a variable ("2x", "11z")


def _final_value(ans: str) -> str:
    """``"26*11 = 286"`` -> ``"286"``: the value after the last ``=`` when it reads as a number and what precedes it
    is a computation (:func:`_is_computation`), else ``ans`` unchanged."""
    if "=" not in ans:
        return ans
    lhs, rhs = ans.rsplit("=", 1)
    rhs = _strip_delimiters(rhs)
    return rhs if parse_number(rhs) is not None and _is_computation(lhs) else ans


def _answer_candidate(window: str) -> str | None:
    """The answer stated right after a literal "answer" (``window`` starts just after it), or ``None``."""
    lead = _ANSWER_LEAD_RE.match(window)
    if lead is None:
        return None
    rest = window[lead.end() :]
    rest = rest.split("\n", 1)[0]
    cand = _strip_delimiters(rest[: _sentence_end(rest)])
    if not cand or len(cand) > _MAX_ANSWER_IS_CHARS:
        return None
    cand = _final_value(cand)
    if parse_number(cand) is not None:
        return cand.replace(",", "") if _THOUSANDS_RE.match(cand) else cand
    if len(_WORD_RE.findall(_UNIT_TEXT_RE.sub("T", cand))) > _MAX_ANSWER_IS_WORDS:
        # Prose. A leading number followed only by words ("42, which is the total") still states the answer.
        m = _LEADING_NUMBER_RE.match(cand)
        if m is not None and not _DIGIT_RE.search(cand, m.end()):
            return _strip_delimiters(m.group(0))
        return None
    return cand


def _answer_is(text: str) -> str | None:
    """The last "answer is X" with a readable X: candidates are tried from the end, so the usual case stops early."""
    for end in reversed([m.end() for m in _ANSWER_WORD_RE.finditer(text)]):
        cand = _answer_candidate(text[end : end + _ANSWER_WINDOW])
        if cand is not None:
            return cand
    return None


def _final_sentence(text: str) -> str | None:
    """The last sentence of the last non-empty line; ``None`` when it is longer than
    :data:`MAX_FINAL_SENTENCE_CHARS` (a run-on paragraph, not a sentence that states an answer)."""
    stripped = text.rstrip()
    line = stripped[stripped.rfind("\n") + 1 :].strip()
    end = len(line)
    while end > 0 and line[end - 1] in ".!? \t":
        end -= 1
    body = line[:end]
    start = 0
    # A final sentence of exactly MAX_FINAL_SENTENCE_CHARS follows the space at len(body) - MAX - 1: reach it.
    lowest = max(len(body) - MAX_FINAL_SENTENCE_CHARS - 2, 0)
    for i in range(len(body) - 1, lowest, -1):
        if body[i - 1] in ".!?" and body[i].isspace():
            start = i
            break
    sentence = body[start:].strip()
    return sentence if len(sentence) <= MAX_FINAL_SENTENCE_CHARS else None


def _numbers_in(s: str) -> list[str] | None:
    """The number tokens of ``s``; ``None`` when one is a coefficient of a variable (``5x``): an expression."""
    nums = []
    for m in _NUMBER_RE.finditer(s):
        e = m.end()
        if e < len(s) and s[e].isalpha() and not (e + 1 < len(s) and s[e + 1].isalpha()):
            return None
        nums.append(m.group(0))
    return nums


def _last_number(text: str) -> str | None:
    """The answer of the final sentence: the number after its last ``=``, else its only number; else ``None``."""
    sentence = _final_sentence(text)
    if not sentence:  # none, or a run-on paragraph
        return None
    if "=" in sentence:
        lhs, sentence = sentence.rsplit("=", 1)
        if _ARITH_RE.search(sentence) or not _is_computation(lhs):
            return None
    nums = _numbers_in(sentence)
    if nums is not None and len(nums) == 1:
        return nums[0].replace(",", "") if _THOUSANDS_RE.match(nums[0]) else nums[0]
    return None


def extract_answer(text: str, fallback: str = "last_number", *, ended: bool = True) -> Extraction:
    """Extract the final answer of a response (see the module docstring).

    The last balanced ``\\boxed{...}`` (or ``\\fbox{...}``) wins; nested braces are matched by a linear scan, and an
    unbalanced box is skipped (never an exception, never regex backtracking). Without a box, ``fallback`` decides
    (one of :data:`FALLBACKS`): ``"answer_is"`` takes the last "answer is X" / "answer: X" up to the end of the
    sentence; ``"last_number"`` tries that, then the number of the final sentence, only if the response ``ended``
    by itself (not cut at the token limit); ``"none"`` stops. An answer ``expr = value`` keeps ``value`` when it is
    a number. Raises ``ValueError`` for an unknown fallback.
    """
    if fallback not in FALLBACKS:
        raise ValueError(f"unknown fallback {fallback!r}; expected one of {FALLBACKS}")
    if not text:
        return Extraction(None, "none")
    boxed = _last_boxed(text)
    if boxed is not None:
        return Extraction(_final_value(boxed), "boxed")
    if fallback in ("answer_is", "last_number"):
        ans = _answer_is(text)
        if ans is not None:
            return Extraction(ans, "answer_is")
    if fallback == "last_number" and ended:
        num = _last_number(text)
        if num is not None:
            return Extraction(num, "last_number")
    return Extraction(None, "none")


# ----------------------------------------------------------------------------------------------------------------------
# Gold answers
# ----------------------------------------------------------------------------------------------------------------------


def _format_decimal(d: Decimal) -> str:
    """``27.0`` -> ``"27"``, ``2.50`` -> ``"2.5"``, ``-0`` -> ``"0"``, ``1E+3`` -> ``"1000"``."""
    if d == 0:
        return "0"
    s = format(d, "f")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s


def normalize_gold(answer: Any) -> str:
    """Normalise a benchmark gold answer to the string the checker compares against.

    AMC floats (``27.0`` or ``"27.0"``) -> ``"27"``; GSM8K ``"1,234"`` (or a full GSM8K solution with
    ``"#### 1,234"``) -> ``"1234"``; ``$`` delimiters, ``\\$`` currency signs and units are stripped from numbers; a
    percentage keeps its ``%`` (``"25\\%"`` -> ``"25%"``); a gold wrapped in a single ``\\boxed{}`` is unwrapped; any
    other LaTeX (MATH answers) is kept as is.
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
        return _format_decimal(Decimal(repr(answer)))
    s = clean_text(str(answer))
    if "####" in s:
        s = s.rsplit("####", 1)[1]
    s = s.strip().replace("\\$", "")
    s = s.strip().strip("$").strip()
    whole_box = _BOX_RE.match(s)
    if whole_box is not None and _match_braces(s).get(whole_box.end() - 1) == len(s) - 1:
        s = s[whole_box.end() : -1].strip()  # a gold given as one \boxed{...}
    num = parse_number(s)
    if num is not None:
        return _format_decimal(num.value) + ("%" if num.percent else "")
    return s


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
# Grading (runs in worker processes)
# ----------------------------------------------------------------------------------------------------------------------

_MV: dict[str, Any] = {}


def _mv_check(gold: str, pred: str) -> tuple[float, str | None]:
    """math-verify, gold first, both wrapped in ``\\boxed{}``; math-verify's signal timeouts disabled
    (``parsing_timeout=None``, ``timeout_seconds=None``): the caller owns the timeout."""
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


@dataclass(frozen=True)
class GradeOptions:
    """The grading knobs of :class:`RewardScorer` that :func:`grade` needs (picklable, sent with each item)."""

    fallback: str = "last_number"
    reject_unevaluated: bool = True
    max_answer_chars: int = 1000
    max_answer_depth: int = 50


def grade(text: str, gold: Any, options: GradeOptions = GradeOptions(), *, ended: bool = True,
          cut: bool = False) -> tuple[float, str | None, str, str | None]:
    """Grade one response against one gold answer, in process and without a timeout: only for trusted inputs, or
    inside a worker (``RewardScorer`` runs it under the per-item timeout). ``ended``: the response stopped by itself
    (the last-number fallback needs it). ``cut``: the text was cut to ``max_chars`` (an empty extraction is then
    ``"too_long"``). Returns ``(reward, extracted, method, failure)``."""
    ext = extract_answer(clean_text(text), options.fallback, ended=ended)
    if ext.answer is None:
        return 0.0, None, ext.method, ("too_long" if cut else "no_answer")
    g = normalize_gold(gold)
    if not g:
        return 0.0, ext.answer, ext.method, "invalid_gold"
    pred = ext.answer
    g_num, p_num = parse_number(g), parse_number(pred)
    if g_num is not None and p_num is not None:
        return (1.0 if _numbers_equal(g_num, p_num) else 0.0), pred, ext.method, None
    if options.reject_unevaluated and g_num is not None and (_ARITH_RE.search(pred) or "=" in pred):
        return 0.0, pred, ext.method, "unevaluated_expression"
    if len(pred) > options.max_answer_chars or _depth(pred) > options.max_answer_depth or _TOWER_RE.search(pred):
        return 0.0, pred, ext.method, "answer_too_complex"
    reward, failure = _mv_check(g, pred)
    return reward, pred, ext.method, failure


def check_answer(pred: str, gold: str) -> bool:
    """In-process check of an extracted answer against a gold answer (normalised here): exact numbers, else
    math-verify **without any timeout**: only for trusted inputs; use :class:`RewardScorer` for model outputs."""
    g = normalize_gold(gold)
    g_num, p_num = parse_number(g), parse_number(pred)
    if g_num is not None and p_num is not None:
        return _numbers_equal(g_num, p_num)
    return _mv_check(g, pred)[0] == 1.0


def _grade_task(text: str, gold: Any, options: GradeOptions, ended: bool, cut: bool) -> tuple:
    """The pool task: :func:`grade`, with any exception of the grader turned into a ``parse_error`` verdict (an
    exception that escapes is reserved for the pool: timeout, dead worker)."""
    try:
        return grade(text, gold, options, ended=ended, cut=cut)
    except Exception as exc:  # noqa: BLE001 - RecursionError, sympy internals...
        return 0.0, None, "none", f"parse_error: {type(exc).__name__}: {str(exc)[:200]}"


def _worker_init() -> None:
    """Pool worker start: Ctrl-C is the parent's to handle; import math-verify/sympy once, before the first item."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except (ValueError, OSError):
        pass
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout disabled" warnings: we own the timeout
    _warm_up()


def _warm_up() -> None:
    """Import math-verify/sympy and run one check, so that the first item does not pay for lazy initialisation.
    Done once in the fork server (see :func:`_add_forkserver_preload`), so that each forked worker is warm."""
    if _MV.get("warm"):
        return
    try:
        _mv_check("1", "1")
        _MV["warm"] = True
    except Exception:  # noqa: BLE001 - each item reports its own error
        logger.debug("reward warm-up failed", exc_info=True)


def _ping() -> int:
    import os

    return os.getpid()


# ----------------------------------------------------------------------------------------------------------------------
# The scorer: a pebble process pool
# ----------------------------------------------------------------------------------------------------------------------


def _default_mp_context() -> str:
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


# Why the pool has its own process classes: a process started with spawn or forkserver re-runs the parent's
# ``__main__`` (as ``__mp_main__``) before it unpickles its target, so that functions defined in a script can be found.
# A stage's ``__main__`` is ``flows.<stage>``, which imports torch, transformers, Prefect and the project: every
# reward worker spent ~3 s and ~380 MB on that import before grading anything. Everything the pool sends to a worker
# lives in this module (``_grade_task``, ``_worker_init``, ``_ping``, ``GradeOptions``), so the workers skip it.
# multiprocessing has no option for this; the preparation data it builds for a child is filtered instead, only while
# one of these classes launches a process (a thread-local flag), so every other process is started as before.
_LAUNCHING_WITHOUT_MAIN = threading.local()
_MAIN_KEYS = ("init_main_from_name", "init_main_from_path")
_PATCH_LOCK = threading.Lock()
_stdlib_preparation_data: Any = None  # multiprocessing.spawn.get_preparation_data, once wrapped


def _preparation_data(name: str) -> dict:
    data = _stdlib_preparation_data(name)
    if getattr(_LAUNCHING_WITHOUT_MAIN, "on", False):
        for key in _MAIN_KEYS:
            data.pop(key, None)
    return data


def _launch_without_main(popen: Any, process_obj: Any) -> Any:
    """``popen(process_obj)`` (which builds the preparation data and starts the child) without the main keys."""
    from multiprocessing import spawn

    global _stdlib_preparation_data
    with _PATCH_LOCK:
        if spawn.get_preparation_data is not _preparation_data:  # once per process: wrap the stdlib's builder
            _stdlib_preparation_data = spawn.get_preparation_data
            spawn.get_preparation_data = _preparation_data
    _LAUNCHING_WITHOUT_MAIN.on = True
    try:
        return popen(process_obj)
    finally:
        _LAUNCHING_WITHOUT_MAIN.on = False


class _SpawnWorker(multiprocessing.context.SpawnProcess):
    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        return _launch_without_main(multiprocessing.context.SpawnProcess._Popen, process_obj)


class _SpawnWorkers(multiprocessing.context.SpawnContext):
    Process = _SpawnWorker


_WORKER_CONTEXTS: dict[str, type] = {"spawn": _SpawnWorkers}
if hasattr(multiprocessing.context, "ForkServerContext"):  # POSIX

    class _ForkServerWorker(multiprocessing.context.ForkServerProcess):
        @staticmethod
        def _Popen(process_obj: Any) -> Any:
            return _launch_without_main(multiprocessing.context.ForkServerProcess._Popen, process_obj)

    class _ForkServerWorkers(multiprocessing.context.ForkServerContext):
        Process = _ForkServerWorker

    _WORKER_CONTEXTS["forkserver"] = _ForkServerWorkers


def _add_forkserver_preload() -> None:
    """Have the fork server import math-verify and warm it up once (``eapo.reward_warmup``), so that a new or
    replacement worker is a cheap, ready fork of a clean, single-threaded process instead of a fresh interpreter
    importing sympy (seconds) and initialising its parser (a tenth of a second). Appends to the existing preload
    list (default ``["__main__"]``); it only takes effect if the fork server has not started yet."""
    from multiprocessing import forkserver

    current = list(getattr(forkserver._forkserver, "_preload_modules", None) or ["__main__"])
    wanted = [m for m in ("eapo.reward", "math_verify", "eapo.reward_warmup") if m not in current]
    if wanted:
        forkserver.set_forkserver_preload(current + wanted)


def _stop_pool(holder: list[Any]) -> None:
    while holder:
        pool = holder.pop()
        pool.stop()
        try:
            pool.join(timeout=10)
        except TimeoutError:
            logger.error("reward pool did not stop within 10 s")


_POOL_ERRORS = ("timeout", "worker_crashed")
#: Seconds beyond ``timeout_s`` without any finished item after which the pool is considered wedged and replaced.
STALL_GRACE_S = 5.0


class RewardScorer:
    """Scores batches of responses against gold answers; extraction and checking run in killable worker processes
    (a :class:`pebble.ProcessPool`), each item under ``timeout_s``.

    ``timeout_s``: per-item budget of extraction and checking together. ``workers``: size of the process pool
    (started on the first batch, or by :meth:`start`). ``fallback``: see :func:`extract_answer`. ``max_chars``:
    responses are cut to their last ``max_chars`` characters. ``score_truncated``: grade responses passed as
    ``truncated`` (cut at the token limit) instead of scoring them 0 with ``"truncated"``; even then the
    last-number fallback is not used for them. ``reject_unevaluated``: the reward hacking guard (module
    docstring). ``max_answer_chars`` / ``max_answer_depth``: bigger extracted answers are refused as
    ``"answer_too_complex"``. ``mp_context``: ``"forkserver"`` (default where available: the fork server is a fresh
    single-threaded process that preloads math-verify, so replacing a killed worker takes milliseconds) or
    ``"spawn"`` (each worker a fresh interpreter, seconds to import sympy); never ``"fork"`` (the trainer has torch
    threads). The workers do not re-run the creating module's ``__main__`` (a stage module and its imports); the fork
    server still imports a script run as ``python script.py`` once, so such a script keeps its
    ``if __name__ == "__main__":`` guard. ``startup_timeout_s``: how long :meth:`start` waits for the workers.
    ``cache_size``: verdicts kept across batches (identical items inside a batch are always graded once).

    Use as a context manager, or call :meth:`close`. Thread-safe (one batch at a time).
    """

    def __init__(
        self,
        timeout_s: float = 5.0,
        workers: int = 2,
        fallback: str = "last_number",
        max_chars: int = 20000,
        *,
        score_truncated: bool = False,
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
        self.score_truncated = bool(score_truncated)
        self.options = GradeOptions(fallback, reject_unevaluated, int(max_answer_chars), int(max_answer_depth))
        self.startup_timeout_s = startup_timeout_s
        self.cache_size = cache_size
        self.mp_context = mp_context
        self._ctx = _WORKER_CONTEXTS[mp_context]()  # workers that do not re-run __main__ (see above)
        if mp_context == "forkserver":
            _add_forkserver_preload()
        self._holder: list[Any] = []  # the pool, once started (a list so that the finalizer can see it)
        self._cache: OrderedDict[tuple, tuple[float, str | None, str, str | None]] = OrderedDict()
        self._lock = threading.RLock()
        self._ready: Any = None  # the pool whose workers were last seen started (see _ready_pool)
        self._closed = False
        self._finalizer = weakref.finalize(self, _stop_pool, self._holder)

    @classmethod
    def from_config(cls, cfg: Any, **overrides: Any) -> RewardScorer:
        """A scorer from a ``RewardConfig`` (``params.reward``); keyword ``overrides`` win."""
        kwargs = {"timeout_s": cfg.timeout_s, "workers": cfg.workers, "fallback": cfg.fallback,
                  "score_truncated": cfg.score_truncated}
        kwargs.update(overrides)
        return cls(**kwargs)

    # -- lifecycle -----------------------------------------------------------------------------------------------------

    def __enter__(self) -> RewardScorer:  # noqa: PYI034 - Self needs Python 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the pool and join every worker. Idempotent."""
        with self._lock:
            self._closed = True
            self._finalizer()

    def _pool(self) -> Any:
        if self._closed:
            raise RuntimeError("RewardScorer is closed")
        if self._holder and not self._holder[0].active:  # pebble marked it broken
            _stop_pool(self._holder)
        if not self._holder:
            from pebble import ProcessPool

            self._holder.append(ProcessPool(max_workers=self.workers, initializer=_worker_init, context=self._ctx))
        return self._holder[0]

    def start(self) -> RewardScorer:
        """Start the workers now and wait until all ``workers`` are alive and have imported math-verify (a warm-up;
        otherwise the pool starts on the first batch). Returns ``self``."""
        with self._lock:
            deadline = time.monotonic() + self.startup_timeout_s
            self._ready_pool()
            while len(self.worker_pids) < self.workers and time.monotonic() < deadline:
                time.sleep(0.02)  # pebble replaces dead workers in the background
            return self

    @property
    def worker_pids(self) -> list[int]:
        """PIDs of the live worker processes (for monitoring; read from pebble's worker table without taking the
        scorer's lock, so it can be watched while a batch runs)."""
        holder = list(self._holder)
        if not holder:
            return []
        workers = holder[0]._pool_manager.worker_manager.workers
        return sorted(pid for pid, proc in list(workers.items()) if proc.is_alive())

    # -- scoring -------------------------------------------------------------------------------------------------------

    def score_one(self, response: str | bytes | None, gold: Any, *, truncated: bool = False) -> RewardResult:
        return self.score([response], [gold], truncated=[truncated])[0]

    def score(self, responses: Sequence[str | bytes | None], golds: Sequence[Any],
              truncated: Sequence[bool] | None = None) -> list[RewardResult]:
        """Score ``responses[i]`` against ``golds[i]``; results in input order. ``truncated[i]``: the response was
        cut at the token limit (finish reason ``"length"``)."""
        if len(responses) != len(golds):
            raise ValueError(f"{len(responses)} responses but {len(golds)} golds")
        if truncated is None:
            truncated = [False] * len(responses)
        if len(truncated) != len(responses):
            raise ValueError(f"{len(responses)} responses but {len(truncated)} truncated flags")
        with self._lock:
            if self._closed:
                raise RuntimeError("RewardScorer is closed")
            results: list[RewardResult | None] = [None] * len(responses)
            pending: dict[tuple, list[tuple[int, str | None]]] = {}
            for i, (resp, gold, trunc) in enumerate(zip(responses, golds, truncated)):
                text, cut, note = self._coerce(resp)
                if trunc and not self.score_truncated:
                    results[i] = RewardResult(0.0, None, "none", "truncated")
                    continue
                key = (text, _gold_key(gold), not trunc, cut)
                cached = self._cache.get(key)
                if cached is not None:
                    self._cache.move_to_end(key)
                    results[i] = _result(cached, note)
                else:
                    pending.setdefault(key, []).append((i, note))
            if pending:
                keys = list(pending)
                verdicts = self._run(keys, [pending[k][0][0] for k in keys], golds)
                for key, verdict in zip(keys, verdicts):
                    if verdict[3] not in _POOL_ERRORS:
                        self._cache[key] = verdict
                        if len(self._cache) > self.cache_size:
                            self._cache.popitem(last=False)
                    for i, note in pending[key]:
                        results[i] = _result(verdict, note)
            out = [r for r in results if r is not None]
            assert len(out) == len(results)
            for i, r in enumerate(out):
                if r.failure is not None:
                    level = logging.WARNING if r.failure in _POOL_ERRORS else logging.INFO
                    shown = None if r.extracted is None else r.extracted[:80]
                    logger.log(level, "reward item %d: reward=%.0f reason=%s extracted=%r", i, r.reward, r.failure,
                               shown)
            return out

    def _coerce(self, response: Any) -> tuple[str, bool, str | None]:
        """(text cut to ``max_chars``, whether it was cut, ``"invalid_utf8"`` or ``None``). Linear."""
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
        cut = len(text) > self.max_chars
        if cut:
            text = text[-self.max_chars :]
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates
            text = text.encode("utf-8", errors="replace").decode("utf-8")
            note = "invalid_utf8"
        return text, cut, note

    def _ready_pool(self) -> Any:
        """The pool, with its workers started and math-verify imported. A fresh pool's workers may take many seconds
        to start on a loaded machine; that is start-up, not grading, so it must finish before the stall window of
        :meth:`_run` opens (otherwise start-up reads as a wedged pool and correct answers come back as
        ``worker_crashed``). Waits at most ``startup_timeout_s``, once per pool."""
        pool = self._pool()
        if pool is not self._ready:
            concurrent.futures.wait([pool.schedule(_ping) for _ in range(self.workers)],
                                    timeout=self.startup_timeout_s)
            self._ready = pool
        return pool

    def _restart_pool(self) -> Any:
        """Stop the pool (killing its workers) and start a fresh one, its workers up (see :meth:`_ready_pool`)."""
        _stop_pool(self._holder)
        return self._ready_pool()

    def _run(self, keys: list[tuple], first_index: list[int], golds: Sequence[Any]) -> list[tuple]:
        """Grade each ``(text, gold, ended, cut)`` key on the pool, each under ``timeout_s``; an item whose worker
        died is retried once. Verdicts in key order.

        pebble hands tasks to workers over one shared channel: a worker killed inside the few instructions where it
        holds the channel lock can leave a task taken but never started, or the lock held. Such a pool makes no
        progress; when nothing has finished for ``timeout_s + STALL_GRACE_S`` (every running task is bounded by
        ``timeout_s``, so a healthy pool always finishes something sooner), or pebble reports the pool broken, the
        pool is replaced and the unfinished items are resubmitted, which counts as their retry."""
        from pebble import ProcessExpired

        out: list[tuple | None] = [None] * len(keys)
        attempts = dict.fromkeys(range(len(keys)), 0)

        def submit(j: int) -> Any:
            text, _, ended, cut = keys[j]
            attempts[j] += 1
            args = (text, golds[first_index[j]], self.options, ended, cut)
            try:
                return self._pool().schedule(_grade_task, args=args, timeout=self.timeout_s)
            except RuntimeError:  # the pool is in an error state: replace it once
                return self._restart_pool().schedule(_grade_task, args=args, timeout=self.timeout_s)

        def retry_or_crash(j: int, why: str) -> None:
            if attempts[j] >= 2:
                out[j] = (0.0, None, "none", "worker_crashed")
                pending.pop(j, None)
            else:
                logger.warning("reward item %d: %s; retrying it once", first_index[j], why)
                pending[j] = submit(j)

        self._ready_pool()
        pending = {j: submit(j) for j in range(len(keys))}
        last_progress = time.monotonic()
        while pending:
            concurrent.futures.wait(list(pending.values()), timeout=0.25,
                                    return_when=concurrent.futures.FIRST_COMPLETED)
            progressed, broken = False, False
            for j, fut in list(pending.items()):
                if not fut.done():
                    continue
                progressed = True
                try:
                    out[j] = tuple(fut.result())
                    del pending[j]
                except (TimeoutError, concurrent.futures.TimeoutError):
                    out[j] = (0.0, None, "none", "timeout")
                    del pending[j]
                except ProcessExpired as exc:
                    retry_or_crash(j, f"its worker {exc.pid} died (exit code {exc.exitcode})")
                except (concurrent.futures.CancelledError, RuntimeError, OSError) as exc:  # BrokenProcessPool
                    broken = True
                    retry_or_crash(j, f"the pool failed ({type(exc).__name__}: {exc})")
                except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable item
                    out[j] = (0.0, None, "none", f"parse_error: {type(exc).__name__}: {str(exc)[:200]}")
                    del pending[j]
            now = time.monotonic()
            if progressed and not broken:
                last_progress = now
            elif pending and (broken or now - last_progress > self.timeout_s + STALL_GRACE_S
                              or not self._holder[0].active):
                logger.error("reward pool stalled or broke with %d items unfinished; replacing it", len(pending))
                self._restart_pool()
                for j in list(pending):
                    retry_or_crash(j, "the pool was replaced")
                last_progress = time.monotonic()
        return [o if o is not None else (0.0, None, "none", "worker_crashed") for o in out]


def _gold_key(gold: Any) -> Any:
    """A hashable cache key of a gold answer that keeps ``27.0`` (float) apart from ``"27.0"``."""
    return (type(gold).__name__, gold if isinstance(gold, (str, int, float, bool, type(None))) else repr(gold))


def _result(verdict: tuple, note: str | None) -> RewardResult:
    reward, extracted, method, failure = verdict
    if failure in ("no_answer", None) and note is not None:
        failure = note
    return RewardResult(float(reward), extracted, method, failure)


def score_one(
    response: str | bytes | None,
    gold: Any,
    *,
    truncated: bool = False,
    scorer: RewardScorer | None = None,
    **scorer_kwargs: Any,
) -> RewardResult:
    """Score one response. Uses ``scorer`` when given; otherwise a temporary one-worker :class:`RewardScorer` built
    from ``scorer_kwargs``, closed before returning."""
    if scorer is not None:
        return scorer.score_one(response, gold, truncated=truncated)
    scorer_kwargs.setdefault("workers", 1)
    with RewardScorer(**scorer_kwargs) as tmp:
        return tmp.score_one(response, gold, truncated=truncated)
