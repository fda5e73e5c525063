"""`python -m animatediff.train CONFIG.yaml`: the entry point torchrun launches (see training/loop.py)."""

import sys

from .training.loop import main

if __name__ == "__main__":
    sys.exit(main())
