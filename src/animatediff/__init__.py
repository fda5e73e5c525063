"""animatediff: AnimateDiff text-to-video in clean PyTorch, offline.

    from animatediff import AnimateDiff
    pipe = AnimateDiff.from_checkpoints(model="model.safetensors", motion_module="mm_sd_v15_v2.ckpt")
    pipe("a corgi running on the beach", seed=42).save("corgi.mp4")
"""

import os

# Before torch loads: let PyTorch back large CPU tensors with transparent huge pages. Filling a
# multi-GB model from a file is bound by page faults on fresh memory in VMs; huge pages halve the
# load time (docs/performance.md). No effect where torch was imported first or THP is off.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from .checkpoints import CheckpointError, load
from .pipeline import AnimateDiff
from .video import Video

__all__ = ["AnimateDiff", "CheckpointError", "Video", "load"]
__version__ = "0.1.0"
