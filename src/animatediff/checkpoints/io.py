"""Reading and writing checkpoint files safely.

- `.safetensors`: the header (an 8-byte length, then JSON: dtype, shape and byte range per tensor) is
  read and checked against the file size up front, so a truncated file is named before any work.
  Each tensor is then read with a plain file read when asked for. No memory map: mapped pages count
  as the process's memory, and a loader that maps a 2 GB file while filling a 4 GB model peaks at
  6 GB; plain reads peak at the model plus one tensor.
- `.ckpt` / `.pt` / `.bin` are torch pickles, read with `weights_only=True` (no code can run) and
  memory-mapped. A `{"state_dict": {...}}` wrapper is unwrapped; non-tensor entries (v3's dummy
  `animatediff_config`, EMA counters) are set aside.
- Every failure becomes a `CheckpointError` that names the file, the problem and what to do.
- Writes are atomic (temporary file + rename), so an interrupted save leaves no half-written file.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path

import torch

SAFETENSORS_SUFFIXES = (".safetensors",)
_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}  # fmt: skip
_MAX_HEADER = 100 * 2**20


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
        self._entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}  # safetensors
        self._tensors: dict[str, torch.Tensor] | None = None  # pickles
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
        self._keys = list(self._tensors) if self._tensors is not None else list(self._entries)

    # -- opening -----------------------------------------------------------------------------------

    def _bad(self, why: str) -> CheckpointError:
        hint = "it may be truncated: re-download it"
        return CheckpointError(self.path, f"not a readable safetensors file ({why})", hint)

    def _open_safetensors(self) -> None:
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 2 <= n <= min(_MAX_HEADER, size - 8):
                raise self._bad("the header length is impossible")
            try:
                header = json.loads(f.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise self._bad(f"the header is not JSON: {e}") from e
        if not isinstance(header, dict):
            raise self._bad("the header is not a JSON object")
        self.metadata = {str(k): str(v) for k, v in (header.pop("__metadata__", None) or {}).items()}
        start, data_size = 8 + n, size - 8 - n
        for key, e in header.items():
            try:
                dtype = _ST_DTYPES[e["dtype"]]
                shape = tuple(int(d) for d in e["shape"])
                begin, end = (int(x) for x in e["data_offsets"])
            except (KeyError, TypeError, ValueError) as err:
                raise self._bad(f"bad header entry for {key!r}") from err
            if end - begin != math.prod(shape) * dtype.itemsize or begin < 0:
                raise self._bad(f"the size of {key!r} does not match its shape")
            if end > data_size:
                raise self._bad(f"the file ends before tensor {key!r}: it is truncated")
            self._entries[key] = (dtype, shape, start + begin, end - begin)

    def _open_pickle(self) -> None:
        try:
            obj = torch.load(str(self.path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(self.path))
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

    # -- access ------------------------------------------------------------------------------------

    def keys(self) -> list[str]:
        return self._keys

    def __contains__(self, key: str) -> bool:
        return key in self._entries or (self._tensors is not None and key in self._tensors)

    def __len__(self) -> int:
        return len(self._keys)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._tensors[key].shape) if self._tensors is not None else self._entries[key][1]

    def dtype(self, key: str) -> torch.dtype:
        return self._tensors[key].dtype if self._tensors is not None else self._entries[key][0]

    def get(self, key: str) -> torch.Tensor:
        """The tensor (pickles: a view of the mapped file; safetensors: freshly read into memory)."""
        if self._tensors is not None:
            return self._tensors[key]
        dtype, shape, offset, nbytes = self._entries[key]
        out = torch.empty(nbytes, dtype=torch.uint8)
        with open(self.path, "rb") as f:
            f.seek(offset)
            if f.readinto(out.numpy()) != nbytes:
                raise CheckpointError(self.path, f"tensor {key!r} is cut short", "the file is truncated: re-download")
        return out.view(dtype).reshape(shape)

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        for k in self._keys:
            yield k, self.get(k)

    def numel(self) -> int:
        return sum(math.prod(self.shape(k)) for k in self._keys)

    def main_dtype(self) -> torch.dtype | None:
        """The dtype holding most of the parameters (files are often fp16 with a few fp32 buffers)."""
        counts: dict[torch.dtype, int] = {}
        for k in self._keys:
            counts[self.dtype(k)] = counts.get(self.dtype(k), 0) + math.prod(self.shape(k))
        return max(counts, key=counts.get) if counts else None


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text.split(". ")[0][:160]


def _looks_like_safetensors(path: Path) -> bool:
    """Header sniffing: an 8-byte little-endian length followed by a JSON object."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < _MAX_HEADER


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
