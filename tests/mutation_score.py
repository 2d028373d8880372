"""Mutation score of a `mutmut run` (``make mutate``): per module and in total, over the mutants named by globs.

    python tests/mutation_score.py 'eapo.core.*' 'eapo.trainer.x_loss_denominator*'

Reads ``mutmut results --all true`` (run from the project root, where ``mutants/`` is). Score = killed / checked,
where checked excludes mutants not run yet; "no tests" (no selected test reaches the function) counts as survived.
Not a test module (pytest collects ``test_*.py`` only).
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

KILLED = {"killed"}
SURVIVED = {"survived", "no tests"}


def results() -> list[tuple[str, str]]:
    mutmut = Path(sys.executable).parent / "mutmut"
    out = subprocess.run([str(mutmut), "results", "--all", "true"], capture_output=True, text=True, check=True).stdout
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^\s*(\S+__mutmut_\d+): (.+?)\s*$", out, re.M)]


def module_of(name: str) -> str:
    return name.split(".x", 1)[0] if ".x" in name else name.rsplit(".", 1)[0]


def main(patterns: list[str]) -> int:
    rows = [(n, s) for n, s in results() if not patterns or any(fnmatch.fnmatch(n, p) for p in patterns)]
    by_module: dict[str, Counter] = {}
    for name, status in rows:
        by_module.setdefault(module_of(name), Counter())[status] += 1
    total = Counter()
    for module, c in sorted(by_module.items()):
        total.update(c)
        checked = sum(v for k, v in c.items() if k in KILLED | SURVIVED)
        score = f"{100 * c['killed'] / checked:5.1f}%" if checked else "  n/a"
        print(f"{module:32s} {score}  killed {c['killed']:4d} / {checked:4d}  ({dict(c)})")
    checked = sum(v for k, v in total.items() if k in KILLED | SURVIVED)
    if checked:
        print(f"{'TOTAL':32s} {100 * total['killed'] / checked:5.1f}%  killed {total['killed']:4d} / {checked:4d}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
