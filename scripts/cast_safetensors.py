"""Cast the floating-point tensors of a safetensors file (checkpoints travelling to and
from a lent GPU machine; see diraccodec.training.checkpoint.cast_file).

    python scripts/cast_safetensors.py SRC DST --dtype float16
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from diraccodec.training.checkpoint import cast_file

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def main() -> None:
    parser = argparse.ArgumentParser(description="Cast the floating-point tensors of a safetensors file.")
    parser.add_argument("source", type=Path)
    parser.add_argument("destination", type=Path)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float16")
    arguments = parser.parse_args()
    cast_file(arguments.source, arguments.destination, DTYPES[arguments.dtype])


if __name__ == "__main__":
    main()
