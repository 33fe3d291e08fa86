"""Inference weights from any training state: the state names the model it trains."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diraccodec.errors import DiracError
from diraccodec.training.base import export_base_checkpoint
from diraccodec.training.checkpoint import load_checkpoint_metadata
from diraccodec.training.diffusion import export_diffusion_checkpoint
from diraccodec.training.restoration import export_restoration_checkpoint

EXPORTERS = {"base": export_base_checkpoint, "diffusion": export_diffusion_checkpoint,
             "restoration": export_restoration_checkpoint}
MODEL_NAMES = {"base": "base codec", "diffusion": "diffusion decoder", "restoration": "restoration filter"}


def state_kind(metadata: dict[str, Any]) -> str:
    """"base", "diffusion" or "restoration". A state without the field, as states of the first
    layout are, is told apart by what it holds: a U-Net's names the base it learnt from, and
    only a restoration filter's said so."""
    if "kind" in metadata:
        return metadata["kind"]
    return "diffusion" if "base_weights_id" in metadata else "base"


def export_checkpoint(checkpoint: Path, output: Path) -> str:
    """Write the weights of the state at `checkpoint` to `output`; returns the model's name."""
    kind = state_kind(load_checkpoint_metadata(checkpoint).metadata)
    if not isinstance(kind, str) or kind not in EXPORTERS:  # a later version's model, or a hand-edited state
        raise DiracError(f"{checkpoint} trains a model this version does not know: {kind!r}")
    EXPORTERS[kind](checkpoint, output)
    return MODEL_NAMES[kind]
