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

__version__ = "0.1.0"
