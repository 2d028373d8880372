"""The stages' steps as small typed Prefect tasks, which the flows (`flows/<stage>.py`) compose, and the tail every
stage shares (`tail.py`: lineage, all-or-nothing write, assets, publication)."""

from functools import partial

from prefect import task
from prefect.cache_policies import NO_CACHE

#: `@stage_task(name="...")`: a Prefect task that never caches. DVC decides what reruns; the steps' inputs (a policy,
#: tables) are not worth hashing for a cache key Prefect would never use.
stage_task = partial(task, cache_policy=NO_CACHE)
