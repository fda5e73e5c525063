"""Precomputed VAE posteriors and text embeddings (`data.cache_dir`), to cut the cost of a step.

With a frozen VAE and text encoder their outputs for a sample never change, so they are computed
once per sample (the clip chosen for epoch 0: no augmentation across epochs) and stored as one
safetensors file per sample. Training then samples the latent from the stored posterior (mean, std)
with that step's seeded noise, exactly as without the cache.

The cache remembers what it was made from, by value: the data settings, the VAE encoder's weights and
the text encoder's weights. Other data or another VAE encoder is refused; another text encoder (a
retrained base, another checkpoint with the same VAE, as most SD1.5 models are) only re-encodes the
captions, keeping the latents, the costly part. When the text encoder learns (a base trained from
scratch), the stored text is ignored and captions are encoded live.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from ..checkpoints.io import CheckpointFile, save_file
from ..prompts import encode_ids, prompt_ids
from .data import ClipDataset, DataError, WebVidCSV
from .shards import ShardSet


def fingerprint(data: ClipDataset, source: str) -> str:
    parts = [source, data.frames, data.stride, data.size, data.seed, data.image, len(data)]
    parts.append(files_signature(data.source))
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def files_signature(source) -> list:
    """Size and modification time of the files the samples come from, so that data rewritten under the
    same names is noticed: every file of a folder (a stat each), the CSV or the shards (a few files; a
    CSV's videos are trusted to stay, as a stat per row of millions would be slow)."""
    if isinstance(source, ShardSet):
        files = list(source.shards)
    elif isinstance(source, WebVidCSV):
        files = [source.csv_path]
    else:
        media = [source.root / name for name in source.names]
        files = media + [f for f in (m.with_suffix(".txt") for m in media) if f.exists()]
    stats = [os.stat(f) for f in files]
    return [len(files), hashlib.sha256(repr([(s.st_size, s.st_mtime_ns) for s in stats]).encode()).hexdigest()[:16]]


def weights_digest(*modules: torch.nn.Module) -> str:
    """The modules' tensors by value (names, dtypes, shapes, bytes): equal digests, equal outputs."""
    h = hashlib.sha256()
    for i, module in enumerate(modules):
        for name, t in sorted(module.state_dict().items()):
            t = t.detach().cpu().contiguous().reshape(-1)
            h.update(f"{i}.{name}:{t.dtype}:{t.numel()}".encode())
            h.update(t.view(torch.uint8).numpy())
    return h.hexdigest()[:16]


def vae_encoder_digest(vae) -> str:
    # only what encode() runs: VAEs that differ in the decoder alone (sd-vae-ft-mse vs the original
    # kl-f8) give the same latents
    return weights_digest(vae.encoder, vae.quant_conv)


def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)  # other processes read it: never half-written


class LatentCache(torch.utils.data.Dataset):
    """Cached samples: `mean`, `std` [F, 4, h, w], `text` [77 * chunks, D], `caption`."""

    def __init__(self, root: str | os.PathLike, data: ClipDataset, source: str = ""):
        """`source` names the data (its folder, CSV or shards) for the fingerprint."""
        self.root, self.data = Path(root), data
        self.key = fingerprint(data, source)

    def path(self, index: int) -> Path:
        return self.root / f"{index:09d}.safetensors"

    @torch.no_grad()
    def build(self, vae, text_encoder, tokenizer, rank: int = 0, world: int = 1, progress=None,
              need_text: bool = True) -> None:  # fmt: skip
        """Compute the missing entries; process r does indices r, r + world, ... (then all wait).
        With `need_text`, captions that another text encoder encoded are encoded again."""
        meta = self.root / "cache.json"
        made = json.loads(meta.read_text()) if meta.exists() else {}
        vae_key = vae_encoder_digest(vae)
        if "fingerprint" in made:  # older caches recorded the model file, not its weights
            raise DataError(f"{self.root} holds a cache from an older animatediff that did not record its VAE; "
                            "delete it (it is rebuilt on the next run)")  # fmt: skip
        if made and (made.get("data"), made.get("vae")) != (self.key, vae_key):
            raise DataError(f"{self.root} holds a cache made from other data or another VAE; "
                            "delete it or choose another data.cache_dir")  # fmt: skip
        text_key = weights_digest(text_encoder)
        stale_text = need_text and made.get("text") != text_key
        self.root.mkdir(parents=True, exist_ok=True)
        self.data.set_epoch(0)
        todo = [i for i in range(rank, len(self.data), world) if stale_text or not self.path(i).exists()]
        # written before any entry, so that an interrupted build is checked too; its text counts as stale
        if rank == 0 and todo:
            _write_json(meta, {"data": self.key, "vae": vae_key, "text": None})
        device = next(vae.parameters()).device
        encode = lambda caption: encode_ids(text_encoder, prompt_ids(tokenizer, [caption])[0], 1)[0].cpu()  # noqa: E731
        for i in progress(todo) if progress else todo:
            if self.path(i).exists():  # only the text is stale: the latents stay
                f = CheckpointFile(self.path(i))
                entry, info = {"mean": f.get("mean"), "std": f.get("std")}, f.metadata
            else:
                sample = self.data[i]
                post = vae.encode(sample["pixels"].to(device), chunk=8)
                entry = {"mean": post.mean.cpu(), "std": post.std.cpu()}
                info = {"caption": sample["caption"], "skipped": str(sample["skipped"])}
            save_file({**entry, "text": encode(info["caption"])}, self.path(i), info)
        if rank == 0:
            fresh = stale_text or not made  # every stored caption now comes from this text encoder
            if fresh or not (self.root / "empty.safetensors").exists():  # (an interrupted build lacks it)
                save_file({"text": encode("")}, self.root / "empty.safetensors")
            # kept text plus new entries from this encoder: mixed, so stale (None) for the next run that needs it
            text = text_key if fresh else None if todo else made.get("text")
            _write_json(meta, {"data": self.key, "vae": vae_key, "text": text, "samples": len(self.data)})

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
