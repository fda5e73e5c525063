"""Training checkpoints: written atomically, the last K kept, resumed exactly.

A checkpoint is a folder `checkpoints/step-000500/` with the trainable weights (and their EMA) as
safetensors, the optimizer / schedule / loss-scaler states, and `state.json` (step, data position).
It is written under a temporary name and renamed when complete, so a run killed mid-write leaves
only complete checkpoints. No RNG state is needed: every random draw of a step is seeded from
(seed, step, sample position), so resuming at a step replays the uninterrupted run exactly.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from ..checkpoints.io import CheckpointFile, save_file

PREFIX = "step-"


def checkpoint_dir(out_dir: Path) -> Path:
    return out_dir / "checkpoints"


def save(
    out_dir: Path, step: int, trainable: dict[str, torch.Tensor], ema: dict[str, torch.Tensor] | None,
    states: dict[str, dict], info: dict, keep: int,
) -> Path:  # fmt: skip
    root = checkpoint_dir(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:07d}"
    tmp = root / f".tmp-{PREFIX}{step:07d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file({k: v.detach().cpu() for k, v in trainable.items()}, tmp / "trainable.safetensors")
        if ema is not None:
            save_file({k: v.detach().cpu() for k, v in ema.items()}, tmp / "ema.safetensors")
        torch.save(states, tmp / "states.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, **info}, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in complete(out_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def complete(out_dir: Path) -> list[Path]:
    """Finished checkpoints, oldest first."""
    root = checkpoint_dir(out_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "state.json").exists()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def load(path: Path) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor] | None, dict]:
    """(info, trainable weights, EMA weights or None, optimizer/schedule states)."""
    info = json.loads((path / "state.json").read_text())
    trainable = dict(CheckpointFile(path / "trainable.safetensors").items())
    ema = dict(CheckpointFile(path / "ema.safetensors").items()) if (path / "ema.safetensors").exists() else None
    states = torch.load(path / "states.pt", map_location="cpu", weights_only=True)
    return info, trainable, ema, states
