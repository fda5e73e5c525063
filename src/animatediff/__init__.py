"""animatediff: AnimateDiff text-to-video in clean PyTorch, offline.

    from animatediff import AnimateDiff
    pipe = AnimateDiff.from_checkpoints(model="model.safetensors", motion_module="mm_sd_v15_v2.ckpt")
    pipe("a corgi running on the beach", seed=42).save("corgi.mp4")
"""

from .checkpoints import CheckpointError, load
from .pipeline import AnimateDiff
from .video import Video

__all__ = ["AnimateDiff", "CheckpointError", "Video", "load"]
__version__ = "0.1.0"
