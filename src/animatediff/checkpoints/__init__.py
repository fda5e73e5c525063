"""Reading, identifying and writing checkpoint files (see each module's docstring for its format)."""

from .io import CheckpointError, CheckpointFile, save_file
from .loading import Component, Loaded, load, load_into

__all__ = ["CheckpointError", "CheckpointFile", "Component", "Loaded", "load", "load_into", "save_file"]
