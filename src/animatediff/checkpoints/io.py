"""Reading and writing checkpoint files safely.

- `.safetensors` is read lazily: keys, shapes and dtypes come from the header; a tensor is read only
  when asked for, so loading never holds a second full copy of a model.
- `.ckpt` / `.pt` / `.bin` are torch pickles, read with `weights_only=True` (no code can run) and
  memory-mapped. A `{"state_dict": {...}}` wrapper is unwrapped; non-tensor entries (v3's dummy
  `animatediff_config`, EMA counters) are set aside.
- Every failure becomes a `CheckpointError` that names the file, the problem and what to do.
- Writes are atomic (temporary file + rename), so an interrupted save leaves no half-written file.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path

import torch

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


class CheckpointError(Exception):
    """A checkpoint file that cannot be used, with a message fit for one line of CLI output."""

    def __init__(self, path: str | os.PathLike | None, problem: str, hint: str = ""):
        self.path, self.problem, self.hint = path, problem, hint
        where = f"{path}: " if path is not None else ""
        super().__init__(f"{where}{problem}" + (f"; {hint}" if hint else ""))


class CheckpointFile:
    """A read-only view of one checkpoint file's tensors: `keys()`, `shape(k)`, `dtype(k)`, `get(k)`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.metadata: dict[str, str] = {}
        self.extras: dict[str, object] = {}  # non-tensor entries found in pickles
        if not self.path.exists():
            raise CheckpointError(self.path, "no such file", "check the path")
        if self.path.is_dir():
            raise CheckpointError(self.path, "is a folder, not a checkpoint file")
        if self.path.stat().st_size == 0:
            raise CheckpointError(self.path, "is empty (0 bytes)", "re-download the file")
        if self.path.suffix.lower() in SAFETENSORS_SUFFIXES or _looks_like_safetensors(self.path):
            self._open_safetensors()
        else:
            self._open_pickle()

    # -- opening -----------------------------------------------------------------------------------

    def _open_safetensors(self) -> None:
        from safetensors import safe_open

        try:
            self._st = safe_open(str(self.path), framework="pt", device="cpu")
            self._keys = list(self._st.keys())
            self.metadata = dict(self._st.metadata() or {})
        except Exception as e:  # safetensors raises its own error types for every header problem
            raise CheckpointError(
                self.path, f"not a readable safetensors file ({_short(e)})", "the file may be truncated: re-download it"
            ) from e
        self._tensors: dict[str, torch.Tensor] | None = None

    def _open_pickle(self) -> None:
        try:
            obj = torch.load(str(self.path), map_location="cpu", weights_only=True, mmap=_is_zip(self.path))
        except pickle.UnpicklingError as e:
            raise CheckpointError(
                self.path,
                "contains Python objects beyond tensors and was refused (loading it could run code)",
                "use a .safetensors version of this file",
            ) from e
        except Exception as e:  # corrupt pickles fail in many ways (KeyError, EOFError, RuntimeError...)
            raise CheckpointError(
                self.path,
                f"not a readable checkpoint ({_short(e)})",
                "the file may be truncated or not a model: re-download it",
            ) from e
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = {**{k: v for k, v in obj.items() if k != "state_dict"}, **obj["state_dict"]}
        if not isinstance(obj, dict):
            raise CheckpointError(self.path, f"holds a {type(obj).__name__}, not a dictionary of tensors")
        self._tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        self.extras = {k: v for k, v in obj.items() if not isinstance(v, torch.Tensor)}
        self._keys = list(self._tensors)

    # -- access ------------------------------------------------------------------------------------

    def keys(self) -> list[str]:
        return self._keys

    @property
    def is_mapped(self) -> bool:
        """True when tensors alias the (memory-mapped) file: pickles. safetensors reads return copies."""
        return self._tensors is not None

    def __contains__(self, key: str) -> bool:
        return key in self._keyset

    @property
    def _keyset(self) -> set[str]:
        if not hasattr(self, "_keyset_cache"):
            self._keyset_cache = set(self._keys)
        return self._keyset_cache

    def __len__(self) -> int:
        return len(self._keys)

    def shape(self, key: str) -> tuple[int, ...]:
        if self._tensors is not None:
            return tuple(self._tensors[key].shape)
        return tuple(self._st.get_slice(key).get_shape())

    def dtype(self, key: str) -> torch.dtype:
        if self._tensors is not None:
            return self._tensors[key].dtype
        return _ST_DTYPES.get(self._st.get_slice(key).get_dtype(), torch.float32)

    def get(self, key: str) -> torch.Tensor:
        if self._tensors is not None:
            return self._tensors[key]
        try:
            return self._st.get_tensor(key)
        except Exception as e:
            raise CheckpointError(
                self.path, f"tensor {key!r} cannot be read ({_short(e)})", "the file may be truncated: re-download it"
            ) from e

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        for k in self._keys:
            yield k, self.get(k)

    def numel(self) -> int:
        n = 0
        for k in self._keys:
            s = 1
            for d in self.shape(k):
                s *= d
            n += s
        return n

    def main_dtype(self) -> torch.dtype | None:
        """The dtype holding most of the parameters (files are often fp16 with a few fp32 buffers)."""
        counts: dict[torch.dtype, int] = {}
        for k in self._keys:
            s = 1
            for d in self.shape(k):
                s *= d
            counts[self.dtype(k)] = counts.get(self.dtype(k), 0) + s
        return max(counts, key=counts.get) if counts else None


_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}  # fmt: skip


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text.split(". ")[0][:160]


def _is_zip(path: Path) -> bool:
    return zipfile.is_zipfile(path)


def _looks_like_safetensors(path: Path) -> bool:
    """Header sniffing: an 8-byte little-endian length followed by a JSON object."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 28)


def save_file(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> None:
    """Write tensors atomically, as safetensors or (by suffix) as a weights-only torch pickle."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    try:
        if path.suffix.lower() in SAFETENSORS_SUFFIXES:
            from safetensors.torch import save_file as st_save

            st_save(tensors, str(tmp), metadata=metadata)
        else:
            torch.save(tensors, tmp)  # a plain {key: tensor} dict: what every tool's loader accepts
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_config_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(path, f"unreadable config.json ({_short(e)})") from e
