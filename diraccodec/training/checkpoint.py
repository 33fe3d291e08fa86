"""Training checkpoints in safetensors: model, Adam moments, RNG state and step.

No pickle: a checkpoint is plain tensors plus JSON metadata, written atomically so a
run killed mid-write leaves the previous checkpoint intact. The Adam moments go to a
sibling file (`NAME.optim.safetensors`) so that each file stays small enough to commit.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from diraccodec.errors import DiracError
from diraccodec.training.averaging import AVERAGE_PREFIX, WeightAverage


@dataclass
class TrainingState:
    step: int
    seconds: float  # wall-clock seconds of training so far, across resumes
    metadata: dict[str, Any]


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Adam,
    generator: torch.Generator,
    state: TrainingState,
    average: WeightAverage | None = None,
) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if average is not None:
        tensors.update(average.state_tensors())
    moments_file: dict[str, torch.Tensor] = {}
    for index, param in enumerate(p for group in optimizer.param_groups for p in group["params"]):
        moments = optimizer.state.get(param)
        if moments:
            moments_file[f"adam.{index}.exp_avg"] = moments["exp_avg"].cpu().contiguous()
            moments_file[f"adam.{index}.exp_avg_sq"] = moments["exp_avg_sq"].cpu().contiguous()
            moments_file[f"adam.{index}.step"] = torch.as_tensor(moments["step"]).reshape(1).float().cpu()
    tensors["rng"] = generator.get_state()
    tensors["rng_global"] = torch.get_rng_state()
    header = {"step": str(state.step), "seconds": f"{state.seconds:.1f}", "meta": json.dumps(state.metadata)}
    path.parent.mkdir(parents=True, exist_ok=True)
    _save_atomic(moments_file, optimizer_path(path), header)  # first: a resume checks the model file's step
    _save_atomic(tensors, path, header)


def optimizer_path(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".safetensors") + ".optim.safetensors")


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path, header: dict[str, str]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    save_file(tensors, str(temporary), metadata=header)
    os.replace(temporary, path)


def cast_file(source: Path, destination: Path, dtype: torch.dtype) -> None:
    """Rewrite a safetensors file with its floating-point tensors in `dtype`, metadata kept.

    Files travel to and from a lent GPU machine under size limits: float16 checkpoints on
    the way there, bfloat16 Adam moments on the way back (float16 would flush the small
    second moments to zero). Step counts stay float32; loading casts back to the parameters.
    """
    metadata, tensors = _read(source)
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not name.endswith(".step"):
            tensors[name] = tensor.to(dtype)
    _save_atomic(tensors, destination, metadata)


def split_file(source: Path, prefix: str, matching: Path, rest: Path) -> None:
    """Write the tensors named `prefix...` to one file and the others to another, each with the
    metadata: a checkpoint over the GPU machine's 16 MiB per returned file (the 2-block U-Net's
    weights with their average, 18.9 MB) comes back in two pieces, exactly."""
    metadata, tensors = _read(source)
    _save_atomic({k: v for k, v in tensors.items() if k.startswith(prefix)}, matching, metadata)
    _save_atomic({k: v for k, v in tensors.items() if not k.startswith(prefix)}, rest, metadata)


def join_files(sources: list[Path], destination: Path) -> None:
    """The inverse of `split_file`: one file with every piece's tensors and the first's metadata."""
    metadata, tensors = _read(sources[0])
    for source in sources[1:]:
        tensors.update(_read(source)[1])
    _save_atomic(tensors, destination, metadata)


def _read(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata(), {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118


def load_checkpoint_metadata(path: Path) -> TrainingState:
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
        return TrainingState(int(header["step"]), float(header["seconds"]), json.loads(header["meta"]))
    except (SafetensorError, OSError, KeyError, ValueError) as error:
        raise DiracError(f"{path} is not a diraccodec training checkpoint ({error})") from None


def load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Adam | None,
    generator: torch.Generator | None,
    average: WeightAverage | None = None,
    prefer_average: bool = False,
) -> TrainingState:
    """Restore a run. `average` takes the checkpoint's weight average (or starts one from the
    loaded weights when it holds none); `prefer_average` loads that average into the model
    instead of the last step's weights, as export does."""
    state = load_checkpoint_metadata(path)
    tensors = load_file(str(path))
    if optimizer is not None and optimizer_path(path).exists():
        moments_state = load_checkpoint_metadata(optimizer_path(path))
        if moments_state.step != state.step:
            raise DiracError(f"{optimizer_path(path)} is from step {moments_state.step}, the model from {state.step}")
        tensors.update(load_file(str(optimizer_path(path))))
    weights = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    if prefer_average and AVERAGE_PREFIX + "updates" in tensors:
        weights = {k: tensors.get(AVERAGE_PREFIX + k, v) for k, v in weights.items()}
    model.load_state_dict(weights)
    if average is not None and not average.load_state_tensors(tensors):
        average.reset(model)
    device = next(model.parameters()).device
    if optimizer is not None:
        for index, param in enumerate(p for group in optimizer.param_groups for p in group["params"]):
            if f"adam.{index}.exp_avg" in tensors:
                optimizer.state[param] = {
                    "step": tensors[f"adam.{index}.step"][0].clone(),
                    # moments may have travelled at lower precision (cast_file)
                    "exp_avg": tensors[f"adam.{index}.exp_avg"].to(device, param.dtype),
                    "exp_avg_sq": tensors[f"adam.{index}.exp_avg_sq"].to(device, param.dtype),
                }
    if generator is not None:
        generator.set_state(tensors["rng"])
        torch.set_rng_state(tensors["rng_global"])
    return state
