"""Training: the paper's stages (domain adapter, motion module, MotionLoRA) and image-model stages.

config.py (YAML -> frozen dataclasses), data.py (clips from captioned videos), shards.py (tar shards:
writing and reading), cache.py (precomputed latents), stages.py (what learns, what is written), loop.py
(the loop, DDP/FSDP, checkpoints), lora.py (trainable low-rank layers).
"""
