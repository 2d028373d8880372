"""The prompt record: the one row type every reader and generator in ``eapo.data`` returns.

A record's ``id`` is ``"<source>-<12 hex chars>"``, the hex being the start of the SHA-256 of the *normalised* prompt
(:func:`normalize_prompt`). The same question therefore gets the same id in every file, run and machine, and two
spellings that differ only in whitespace or case share one id (which is exactly what :func:`eapo.data.split.dedupe`
drops).
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["DataError", "PromptRecord", "dump_meta", "make_id", "normalize_prompt", "prompt_hash"]

_WHITESPACE = re.compile(r"\s+")
_HASH_CHARS = 12


class DataError(ValueError):
    """Any problem with input data or with a data request.

    The message names the file, the 1-based line (or row) and the field when they are known; they are also kept as
    attributes (``path``, ``line``, ``field``) for programs that want to react to them.
    """

    def __init__(
        self,
        problem: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
        unit: str = "line",
    ) -> None:
        self.problem = problem
        self.path = None if path is None else str(path)
        self.line = line
        self.field = field
        parts = []
        if self.path is not None:
            parts.append(self.path)
        if line is not None:
            parts.append(f"{unit} {line}")
        if field is not None:
            parts.append(f"field {field!r}")
        parts.append(problem)
        super().__init__(": ".join(parts))


def normalize_prompt(text: str) -> str:
    """The key that decides whether two prompts are "the same": NFKC, whitespace collapsed and stripped, casefolded."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip().casefold()


def prompt_hash(prompt: str) -> str:
    """The first 12 hex characters of the SHA-256 of the normalised prompt."""
    return hashlib.sha256(normalize_prompt(prompt).encode("utf-8")).hexdigest()[:_HASH_CHARS]


def make_id(source: str, prompt: str) -> str:
    """A stable record id: ``"<source>-<prompt_hash>"``, e.g. ``"gsm8k-3f2a9c1d0b7e"``."""
    return f"{source}-{prompt_hash(prompt)}"


def dump_meta(meta: dict[str, Any] | None) -> str:
    """Canonical JSON text for a record's ``meta`` (sorted keys, so equal metadata gives equal text)."""
    return json.dumps(meta or {}, sort_keys=True, ensure_ascii=False)


@dataclass(frozen=True)
class PromptRecord:
    """One prompt with its gold answer.

    Fields: ``id`` (stable, see :func:`make_id`), ``source`` ("synthetic", "gsm8k", "math500", "aime24", "amc23" or a
    user's name), ``prompt`` (question text, no chat template), ``answer`` (normalised gold final answer),
    ``difficulty`` (e.g. "add-1", "level-3", or the source name), ``family`` (synthetic family, MATH subject, or ""),
    ``meta`` (a JSON object as text; "{}" if none).
    """

    id: str
    source: str
    prompt: str
    answer: str
    difficulty: str
    family: str = ""
    meta: str = "{}"

    def __post_init__(self) -> None:
        for name in ("id", "source", "prompt", "answer", "difficulty", "family", "meta"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise DataError(f"must be a str, got {type(value).__name__}", field=name)
        for name in ("id", "source", "prompt", "answer", "difficulty"):
            if not getattr(self, name).strip():
                raise DataError("must not be empty", field=name)
        try:
            parsed = json.loads(self.meta)
        except json.JSONDecodeError as err:
            raise DataError(f"is not valid JSON ({err.msg})", field="meta") from None
        if not isinstance(parsed, dict):
            raise DataError(f"must be a JSON object, got {type(parsed).__name__}", field="meta")

    @property
    def key(self) -> str:
        """The normalised prompt (the dedupe / leakage key)."""
        return normalize_prompt(self.prompt)

    @property
    def meta_dict(self) -> dict[str, Any]:
        return json.loads(self.meta)

    def as_dict(self) -> dict[str, str]:
        return asdict(self)
