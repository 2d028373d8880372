"""Prompt data: readers for benchmark and generic files, the synthetic arithmetic generator, dedupe/split/filter,
and the order in which training visits the prompts.

Everything returns lists of :class:`PromptRecord`; every data problem raises :class:`DataError` (a ``ValueError``).
Pure library: no Prefect, no DVC, no paths of its own.
"""

from eapo.data.importers import FIELD_NAMES, IMPORTERS, Importer, read_records, read_sources
from eapo.data.records import DataError, PromptRecord, make_id, normalize_prompt, prompt_hash
from eapo.data.schedule import step_prompt_indices
from eapo.data.split import check_no_leakage, dedupe, filter_records, split_train_test
from eapo.data.synthetic import FAMILIES, generate

__all__ = [
    "FAMILIES",
    "FIELD_NAMES",
    "IMPORTERS",
    "DataError",
    "Importer",
    "PromptRecord",
    "check_no_leakage",
    "dedupe",
    "filter_records",
    "generate",
    "make_id",
    "normalize_prompt",
    "prompt_hash",
    "read_records",
    "read_sources",
    "split_train_test",
    "step_prompt_indices",
]
