"""Tiny configurations of the real model classes, shared by the tests."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from animatediff.config import MotionConfig, TextConfig, UNetConfig, VAEConfig

sys.path.insert(0, str(Path(__file__).parent))  # tests/reference.py

TINY_UNET = UNetConfig(
    block_out_channels=(32, 64, 64, 64), norm_num_groups=8, num_heads=(2, 2, 2, 2), cross_attention_dim=48
)
TINY_MOTION = {
    name: replace(MotionConfig.from_name(name), norm_num_groups=8, num_heads=2)
    for name in ("mm_sd_v15", "mm_sd_v15_v2", "v3_sd15_mm")
}
TINY_VAE = VAEConfig(block_out_channels=(16, 32, 32, 32), norm_num_groups=8)
TINY_TEXT = TextConfig(hidden_size=48, intermediate_size=96, num_layers=2, num_heads=4)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
