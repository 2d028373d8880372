"""Training checkpoints: write atomically, find the latest, load exactly, keep the last few.

Layout of one checkpoint (``<root>/step-00012/``)::

    model.safetensors   the model's state dict (``safetensors.torch.save_model``: tied weights are stored once)
    optimizer.pt        optimizer.state_dict()            (tensors + numbers: loads with weights_only=True)
    scheduler.pt        scheduler.state_dict()
    rng.pt              torch CPU (and CUDA) generator states
    rng.json            python ``random`` and numpy global states
    steps.json          the per-step metrics rows so far
    state.json          {"step": 12, "config": {...}}: the last completed step and the config that produced it

A checkpoint is written into a hidden temporary directory next to its final place and renamed into place only when
every file is complete, so a run killed mid-write leaves either the old set of checkpoints or the new one, never a
half-written directory that a resume would trust. ``latest`` only ever returns directories whose name matches
``step-NNNNN`` and that hold ``state.json`` (written last).
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from eapo.stageio import atomic_dir

__all__ = ["CheckpointState", "atomic_dir", "latest", "load", "prune", "save", "step_dir"]

_NAME = re.compile(r"^step-(\d{5,})$")


@dataclass
class CheckpointState:
    """What ``load`` hands back besides the tensors it restores in place."""

    step: int
    steps: list[dict]
    config: dict
    path: Path


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step-{step:05d}"


def _rng_state() -> tuple[dict, dict]:
    py = random.getstate()
    np_state = np.random.get_state()
    json_part = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    tensor_part: dict[str, Any] = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensor_part["cuda"] = torch.cuda.get_rng_state_all()
    return json_part, tensor_part


def _set_rng_state(json_part: dict, tensor_part: dict) -> None:
    v, state, gauss = json_part["python"]
    random.setstate((v, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = json_part["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensor_part["torch_cpu"])
    if "cuda" in tensor_part and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(tensor_part["cuda"])


def save(root: Path, step: int, *, model, optimizer, scheduler, steps: list[dict], config: dict) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically; returns its directory. An existing one is replaced."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = step_dir(root, step)
    with atomic_dir(final) as tmp:
        save_model(model, str(tmp / "model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        json_rng, tensor_rng = _rng_state()
        torch.save(tensor_rng, tmp / "rng.pt")
        (tmp / "rng.json").write_text(json.dumps(json_rng))
        (tmp / "steps.json").write_text(json.dumps(steps, indent=1))
        # state.json last: its presence marks a complete checkpoint even on filesystems without atomic rename.
        (tmp / "state.json").write_text(json.dumps({"step": step, "config": config}, indent=1, default=str))
    return final


def latest(root: Path) -> Path | None:
    """The complete checkpoint with the highest step under ``root``, or None."""
    root = Path(root)
    if not root.is_dir():
        return None
    found = []
    for p in root.iterdir():
        m = _NAME.match(p.name)
        if m and (p / "state.json").is_file():
            found.append((int(m.group(1)), p))
    return max(found)[1] if found else None


def load(path: Path, *, model, optimizer=None, scheduler=None, restore_rng: bool = True) -> CheckpointState:
    """Restore model (and optimizer, scheduler, global RNG states if given) from checkpoint ``path`` in place."""
    path = Path(path)
    state = json.loads((path / "state.json").read_text())
    # strict: a checkpoint from another architecture must fail loudly, not load half the weights.
    load_model(model, str(path / "model.safetensors"), strict=True)
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    if scheduler is not None:
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu", weights_only=True))
    if restore_rng:
        _set_rng_state(json.loads((path / "rng.json").read_text()),
                       torch.load(path / "rng.pt", map_location="cpu", weights_only=True))
    steps = json.loads((path / "steps.json").read_text())
    return CheckpointState(step=int(state["step"]), steps=steps, config=state.get("config", {}), path=path)


def prune(root: Path, keep: int = 2) -> None:
    """Delete all but the ``keep`` newest complete checkpoints, and any temporary leftovers of killed writes."""
    root = Path(root)
    if not root.is_dir():
        return
    done = sorted((int(m.group(1)), p) for p in root.iterdir()
                  if (m := _NAME.match(p.name)) and (p / "state.json").is_file())
    for _, p in done[:-keep] if keep > 0 else done:
        shutil.rmtree(p, ignore_errors=True)
    for p in root.iterdir():
        if p.name.startswith(".step-") and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
