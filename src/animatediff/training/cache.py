"""Precomputed VAE posteriors and text embeddings (`data.cache_dir`), to cut the cost of a step.

With a frozen VAE and text encoder their outputs for a sample never change, so they are computed
once per sample (the clip chosen for epoch 0: no augmentation across epochs) and stored as one
safetensors file per sample. Training then samples the latent from the stored posterior (mean, std)
with that step's seeded noise, exactly as without the cache. The cache remembers what it was made
from (model file, data settings); using it with anything else is refused. When the text encoder
learns (a base trained from scratch), the stored text is ignored and captions are encoded live.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from ..checkpoints.io import CheckpointFile, save_file
from ..prompts import encode_ids, prompt_ids
from .data import ClipDataset, DataError


def fingerprint(model: str, data: ClipDataset, source: str) -> str:
    stat = os.stat(model) if os.path.isfile(model) else None
    parts = [os.path.abspath(model), stat.st_size if stat else 0, stat.st_mtime_ns if stat else 0, source,
             data.frames, data.stride, data.size, data.seed, data.image, len(data)]  # fmt: skip
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


class LatentCache(torch.utils.data.Dataset):
    """Cached samples: `mean`, `std` [F, 4, h, w], `text` [77 * chunks, D], `caption`."""

    def __init__(self, root: str | os.PathLike, data: ClipDataset, model_path: str, source: str = ""):
        """`source` names the data (its folder, CSV or shards) for the fingerprint."""
        self.root, self.data = Path(root), data
        self.key = fingerprint(model_path, data, source)
        meta = self.root / "cache.json"
        if meta.exists():
            made = json.loads(meta.read_text()).get("fingerprint")
            if made != self.key:
                raise DataError(f"{self.root} holds a cache made from other data or another model; "
                                "delete it or choose another data.cache_dir")  # fmt: skip

    def path(self, index: int) -> Path:
        return self.root / f"{index:09d}.safetensors"

    @torch.no_grad()
    def build(self, vae, text_encoder, tokenizer, rank: int = 0, world: int = 1, progress=None) -> None:
        """Compute the missing entries; process r does indices r, r + world, ... (then all wait)."""
        self.root.mkdir(parents=True, exist_ok=True)
        device = next(vae.parameters()).device
        self.data.set_epoch(0)
        todo = [i for i in range(rank, len(self.data), world) if not self.path(i).exists()]
        for i in progress(todo) if progress else todo:
            sample = self.data[i]
            post = vae.encode(sample["pixels"].to(device), chunk=8)
            ids, _ = prompt_ids(tokenizer, [sample["caption"]])
            text = encode_ids(text_encoder, ids, 1)[0]
            save_file({"mean": post.mean.cpu(), "std": post.std.cpu(), "text": text.cpu()}, self.path(i),
                      {"caption": sample["caption"], "skipped": str(sample["skipped"])})  # fmt: skip
        if rank == 0:
            empty = encode_ids(text_encoder, prompt_ids(tokenizer, [""])[0], 1)[0]
            save_file({"text": empty.cpu()}, self.root / "empty.safetensors")
            (self.root / "cache.json").write_text(json.dumps({"fingerprint": self.key, "samples": len(self.data)}))

    def empty_text(self) -> torch.Tensor:
        return CheckpointFile(self.root / "empty.safetensors").get("text")

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict:
        f = CheckpointFile(self.path(index))
        return {"mean": f.get("mean"), "std": f.get("std"), "text": f.get("text"),
                "caption": f.metadata.get("caption", ""), "index": index,
                "skipped": int(f.metadata.get("skipped", 0))}  # fmt: skip


def collate_cached(samples: list[dict]) -> dict:
    return {
        "mean": torch.stack([s["mean"] for s in samples]),
        "std": torch.stack([s["std"] for s in samples]),
        "text": [s["text"] for s in samples],
        "caption": [s["caption"] for s in samples],
        "index": torch.tensor([s["index"] for s in samples]),
        "skipped": sum(s["skipped"] for s in samples),
    }
