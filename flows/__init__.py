"""Prefect flows: one per DVC stage (`python -m flows.<stage>`), plus the whole-pipeline flow and its deployment."""

import os

import eapo  # noqa: F401  (telemetry off before Prefect is imported)

# The ephemeral API starts a local server per process; 20 s (the default) is tight on 2 loaded cores.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
# The library logs on "eapo.*" (one line per training step, reward failures): show it in the Prefect UI's run logs too.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "eapo")

# A stage started as `python -m flows.<stage>` under `python -m flows.warm -- CMD` (as `make run` runs `dvc repro`)
# runs in the warm server's forked process, and this process exits with its status; elsewhere this returns at once.
from flows.handoff import hand_off  # noqa: E402

hand_off()
