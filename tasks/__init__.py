"""Prefect tasks, one per stage: read inputs, call the `eapo` library, write validated artifacts. Thin by design."""
