"""Entropy-aware credit assignment in RLVR.

The library: pure math in ``eapo.core``, data, rewards, policy loading and sampling, and the artifact contracts.
It knows nothing of Prefect or DVC; ``tasks/`` and ``flows/`` wire it into the pipeline.
"""

import os

# Quiet on the network by default. Set here, in the package, so that every entry point (CLI, flows, tests, notebooks)
# gets it, not only `make`. `setdefault` leaves a user's explicit choice alone.
_QUIET_ENV = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
for _key, _value in _QUIET_ENV.items():
    os.environ.setdefault(_key, _value)

# OpenMP threads sleep at a barrier instead of spinning. On a shared machine a spinning thread burns the CPU its
# descheduled partner needs: beside a one-core load, a 2-thread training step took 2.0x its unloaded time with libgomp's
# default and 1.7x with PASSIVE (benchmarks/bench_threading.py). libgomp reads this when torch is imported, so it only
# takes effect where eapo is imported first (every stage, the CLI and the tests are); a user's own value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
