"""Cast the floating-point tensors of a safetensors file, or split one in two and join the
pieces again (checkpoints travelling to and from a lent GPU machine; see
diraccodec.training.checkpoint.cast_file and split_file).

    python scripts/cast_safetensors.py SRC DST --dtype float16
    python scripts/cast_safetensors.py SRC WEIGHTS --split model. REST
    python scripts/cast_safetensors.py WEIGHTS DST --join REST
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from diraccodec.training.checkpoint import cast_file, join_files, split_file

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def main() -> None:
    parser = argparse.ArgumentParser(description="Cast the floating-point tensors of a safetensors file.")
    parser.add_argument("source", type=Path)
    parser.add_argument("destination", type=Path)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float16")
    parser.add_argument("--split", nargs=2, metavar=("PREFIX", "REST"),
                        help="Instead: tensors named PREFIX... to DESTINATION, the others to REST.")
    parser.add_argument("--join", type=Path, metavar="REST", help="Instead: SOURCE and REST joined into DESTINATION.")
    arguments = parser.parse_args()
    if arguments.split:
        split_file(arguments.source, arguments.split[0], arguments.destination, Path(arguments.split[1]))
    elif arguments.join:
        join_files([arguments.source, arguments.join], arguments.destination)
    else:
        cast_file(arguments.source, arguments.destination, DTYPES[arguments.dtype])


if __name__ == "__main__":
    main()
