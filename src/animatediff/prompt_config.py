"""The original repository's prompt configs (`configs/prompts/*.yaml`), as `animatediff run` reads them.

Two generations of the format are accepted:
- v2/v3 era: a list of entries with `dreambooth_path`, `lora_model_path`, `lora_alpha`, `motion_module`,
  `motion_module_lora_configs: [{path, alpha}]`, `adapter_lora_path`, `adapter_lora_scale`,
  `inference_config`, `seed`, `steps`, `guidance_scale`, `prompt`, `n_prompt`, `W`, `H`, `L`;
- v1 era: a mapping of named entries with `base` (a model) and `path` (a model or a LoRA).
Relative paths are tried against the current folder (where the original ran from) and then the
config's own folder. `seed: -1` means a random seed, as in the original.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import yaml

_KNOWN = {
    "dreambooth_path", "lora_model_path", "lora_alpha", "motion_module", "motion_module_lora_configs",
    "adapter_lora_path", "adapter_lora_scale", "inference_config", "seed", "steps", "guidance_scale",
    "prompt", "n_prompt", "W", "H", "L", "base", "path", "controlnet_path", "controlnet_config",
    "controlnet_images", "controlnet_image_indexs",
}  # fmt: skip


@dataclass
class Job:
    """One video to make."""

    name: str
    model: Path | None
    motion_module: Path | None
    motion_version: str | None
    loras: list[tuple[Path, float]]
    motion_loras: list[tuple[Path, float]]
    adapter: tuple[Path, float] | None
    prompt: str
    negative: str
    seed: int
    steps: int
    guidance: float
    width: int
    height: int
    frames: int
    notes: list[str] = field(default_factory=list)


def _path(value: str | None, base: Path) -> Path | None:
    if not value:
        return None
    p = Path(value).expanduser()
    if p.is_absolute() or p.exists():
        return p
    beside = base / p
    return beside if beside.exists() else p  # a missing file is reported when it is loaded


def _version(inference_config: str | None) -> str | None:
    """inference-v1.yaml / inference-v2.yaml / inference-v3.yaml name the motion-module family."""
    if not inference_config:
        return None
    stem = Path(inference_config).stem
    return next((v for v in ("v1", "v2", "v3") if stem.endswith(v)), "v1" if stem == "inference" else None)


def _is_lora(path: Path) -> bool:
    from .checkpoints import load

    try:
        return load(path).kind == "lora"
    except Exception:  # unreadable files are reported, with their reason, when the job loads them
        return False


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def read_jobs(path: str | Path, default_model: Path | None = None) -> list[Job]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: cannot read the prompt config ({str(e).splitlines()[0]})") from e
    if isinstance(data, dict):  # v1 era: named entries
        entries = list(data.items())
    elif isinstance(data, list):
        entries = [(f"{i}", e) for i, e in enumerate(data)]
    else:
        raise ValueError(f"{path}: expected a list (or mapping) of prompt entries")
    folder = path.parent
    jobs: list[Job] = []
    for name, e in entries:
        if not isinstance(e, dict):
            raise ValueError(f"{path}: entry {name} is not a mapping")
        unknown = set(e) - _KNOWN
        if unknown:
            raise ValueError(f"{path}: entry {name} has unknown keys {sorted(unknown)}")
        if e.get("controlnet_path"):
            raise ValueError(f"{path}: entry {name} uses SparseCtrl (controlnet_path), which is not supported yet")
        model = _path(e.get("dreambooth_path") or e.get("base"), folder) or default_model
        loras = []
        if e.get("lora_model_path"):
            loras.append((_path(e["lora_model_path"], folder), float(e.get("lora_alpha", 0.8))))
        if e.get("path"):  # v1: a personalised model, or a LoRA on top of `base`
            p = _path(e["path"], folder)
            if _is_lora(p):
                loras.append((p, float(e.get("lora_alpha", 0.8))))
            else:
                model = p
        motion_loras = [
            (_path(c["path"], folder), float(c.get("alpha", 1.0))) for c in e.get("motion_module_lora_configs") or []
        ]
        adapter = None
        if e.get("adapter_lora_path"):
            adapter = (_path(e["adapter_lora_path"], folder), float(e.get("adapter_lora_scale", 1.0)))
        prompts = _as_list(e.get("prompt", ""))
        negatives = _as_list(e.get("n_prompt", ""))
        seeds = _as_list(e.get("seed", -1))
        for module in _as_list(e.get("motion_module")):
            for i, prompt in enumerate(prompts):
                seed = int(seeds[i] if i < len(seeds) else seeds[-1])
                jobs.append(Job(
                    name=f"{name}-{i}", model=model, motion_module=_path(module, folder),
                    motion_version=_version(e.get("inference_config")), loras=list(loras),
                    motion_loras=motion_loras, adapter=adapter, prompt=str(prompt),
                    negative=str(negatives[i] if i < len(negatives) else negatives[-1]),
                    seed=random.randint(0, 2**63 - 1) if seed == -1 else seed,
                    steps=int(e.get("steps", 25)), guidance=float(e.get("guidance_scale", 7.5)),
                    width=int(e.get("W", 512)), height=int(e.get("H", 512)), frames=int(e.get("L", 16)),
                ))  # fmt: skip
    return jobs
