"""Reading, identifying and writing checkpoint files (see each module's docstring for its format)."""

from .io import CheckpointError, CheckpointFile, save_file
from .loading import Component, Loaded, load, load_into
from .lora import LoraSet, LoraWeight, load_lora

__all__ = [
    "CheckpointError", "CheckpointFile", "Component", "Loaded", "LoraSet", "LoraWeight",
    "load", "load_into", "load_lora", "save_file",
]  # fmt: skip
