"""A model's resumable training state: one folder of parts, each small enough to commit or carry.

The state is one safetensors stream cut into parts of at most `part_bytes` (15 MiB by default;
a GPU machine returns files of at most 16 MiB): the float32 parameters, the weight average, the
Adam moments in bfloat16 (float16 would flush the small second moments to zero; float32 on
request, for a bit-exact resume), the RNG states, and in its header the step, the schedule's
warm-up and the run's metadata as JSON. Concatenating the parts in name order gives a plain
safetensors file. No pickle.

A save writes every part into a temporary folder and renames it into place, so a kill
mid-write leaves the previous state whole; each save replaces the previous state instead of
adding one. The older layout, one file `NAME.safetensors` with its Adam moments in
`NAME.optim.safetensors`, is still read (to resume or export it) and replaced by the folder at
the next save. `checkpoints/base.safetensors` and `checkpoints/base` name the same state.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load, load_file, save

from diraccodec.errors import DiracError, file_fault
from diraccodec.image.files import WRITE_CHECK_NAME, check_writable_folder
from diraccodec.training.averaging import AVERAGE_PREFIX, WeightAverage

PART_PREFIX = "state.safetensors."
DEFAULT_PART_BYTES = 15 * 2**20
MOMENTS_DTYPE = torch.bfloat16
STATE_FORMAT = "diraccodec training state 1"
MODEL_PREFIX = "model."
ADAM_PREFIX = "adam."
RNG_PREFIX = "rng."


@dataclass
class TrainingState:
    step: int
    seconds: float  # wall-clock seconds of training so far, across resumes
    metadata: dict[str, Any]
    warmup_from: int | None = None  # the step a learning-rate ramp started at (a run begun without moments)


def export_info(state: TrainingState) -> dict[str, Any]:
    """What a weights file records of the state it was exported from: how long that trained,
    and the state's own record (config, data, the weights it built on)."""
    return {"steps": state.step, "training_hours": round(state.seconds / 3600, 3), **state.metadata}


def state_folder(path: Path) -> Path:
    """The folder holding the state named `path` (a `.safetensors` suffix is dropped)."""
    path = Path(path)
    if not path.name.removesuffix(".safetensors"):  # "." or "/": no name of its own
        raise DiracError(f"name a folder of its own for the training state, not {str(path)!r}")
    return path.with_name(path.name.removesuffix(".safetensors"))


def state_parts(path: Path) -> list[Path]:
    """The parts of a saved state, in the order they join."""
    return sorted(state_folder(path).glob(PART_PREFIX + "*"))


def summary_path(path: Path) -> Path:
    """The JSON summary of the latest run, beside the state."""
    folder = state_folder(path)
    return folder.with_name(folder.name + ".summary.json")


def _previous(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}.previous")


def _temporary(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}.partial")


def _legacy_files(folder: Path) -> tuple[Path, Path]:
    """The older layout's checkpoint and Adam moments files."""
    return folder.with_name(folder.name + ".safetensors"), folder.with_name(folder.name + ".optim.safetensors")


def _is_legacy_checkpoint(file: Path) -> bool:
    """Whether `file` is a checkpoint of the older layout (its header names a step), not, say,
    weights exported beside the state under the same name."""
    try:
        with safe_open(str(file), framework="pt") as handle:
            return "step" in (handle.metadata() or {})
    except (SafetensorError, OSError):
        return False


def _stored_at(path: Path) -> Path | None:
    """Where the state named `path` is: its folder, the previous folder (a save killed between
    its two renames leaves only that), or an older single file; None when there is none."""
    folder = state_folder(path)
    for candidate in (folder, _previous(folder)):
        if (candidate / f"{PART_PREFIX}000").is_file():
            return candidate
    legacy = _legacy_files(folder)[0]
    return legacy if legacy.is_file() else None  # read_state says so where it is not one


def _foreign_entries(folder: Path) -> list[str]:
    """The names in a state's folder that are not its parts (nor a write check's trial file)."""
    if not folder.is_dir():
        return []
    return sorted(entry.name for entry in folder.iterdir()
                  if not entry.name.startswith((PART_PREFIX, f".{WRITE_CHECK_NAME}.")))


def check_state_place(path: Path) -> None:
    """Refuse, before any work, a state name whose folder holds other files (a state's folder is
    the state's alone: `--checkpoint photos/` would mix the two; hidden ones, such as a file
    manager's .DS_Store, say no such thing, and the saves keep them), or is a file, or whose
    parent cannot take the save's new folder; and files an interrupted save left in its
    temporary folder, which the next save would clear."""
    folder = state_folder(path)
    if folder.exists() and not folder.is_dir():
        raise DiracError(f"{folder} is a file, not a training state's folder")
    if others := [name for name in _foreign_entries(folder) if not name.startswith(".")]:
        raise DiracError(f"{folder} holds other files than a training state ({others[0]}): move them out of it, "
                         f"or name another folder")
    _check_no_stranded(folder)
    check_writable_folder(folder.parent)  # where the save writes its new folder, then renames it


def _check_no_stranded(folder: Path) -> None:
    """A save carries files that came into the state's folder during a run into its new folder,
    by way of the temporary one: a save killed between the two leaves them there, to be moved
    back rather than cleared."""
    temporary = _temporary(folder)
    if stranded := _foreign_entries(temporary):
        raise DiracError(f"{temporary} holds {stranded[0]}, left by an interrupted save: move it back into "
                         f"{folder}")


def check_not_in_state(output: Path, state: Path) -> None:
    """Refuse an output that is a state's folder or inside it (the next save replaces the folder)."""
    folder = state_folder(state).resolve()
    if Path(output).resolve().is_relative_to(folder):
        raise DiracError(f"{output} is the training state {folder} or inside it: write it elsewhere")


def state_exists(path: Path) -> bool:
    return _stored_at(path) is not None


def write_state(path: Path, tensors: dict[str, torch.Tensor], state: TrainingState,
                part_bytes: int = DEFAULT_PART_BYTES) -> list[Path]:
    """Replace the state at `path` with these tensors and this state, atomically; returns the parts."""
    if part_bytes < 1:
        raise ValueError(f"parts of {part_bytes} bytes")
    header = {"format": STATE_FORMAT, "step": str(state.step), "seconds": f"{state.seconds:.3f}",
              "meta": json.dumps(state.metadata)}
    if state.warmup_from is not None:
        header["warmup_from"] = str(state.warmup_from)
    stream = memoryview(save(tensors, metadata=header))
    folder = state_folder(path)
    temporary, previous = _temporary(folder), _previous(folder)
    _check_no_stranded(folder)
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    for index, start in enumerate(range(0, len(stream), part_bytes)):
        with open(temporary / f"{PART_PREFIX}{index:03d}", "wb") as part:
            part.write(stream[start : start + part_bytes])
            part.flush()
            os.fsync(part.fileno())
    for name in _foreign_entries(folder):  # what else came into the folder goes with the state, never away
        os.replace(folder / name, temporary / name)
    if folder.is_dir():
        shutil.rmtree(previous, ignore_errors=True)  # a whole state stands at `folder`
        os.replace(folder, previous)
    os.replace(temporary, folder)
    _sync_folder(folder.parent)
    shutil.rmtree(previous, ignore_errors=True)
    older, moments = _legacy_files(folder)
    if _is_legacy_checkpoint(older):  # the state they held is in the parts now
        older.unlink()
        moments.unlink(missing_ok=True)
    return state_parts(folder)


def _sync_folder(folder: Path) -> None:
    """Make the renames in `folder` durable (where the system allows a folder to be synced)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def read_state(path: Path) -> tuple[TrainingState, dict[str, torch.Tensor]]:
    """The state and every tensor of the state named `path`, in either layout."""
    location = _stored_at(path)
    if location is None:
        raise DiracError(f"no training state at {state_folder(path)}")
    try:
        if location.is_dir():
            stream = b"".join(part.read_bytes() for part in state_parts(location))
            return _state_from_header(_header_of(stream)), load(stream)
        return _read_legacy(location)
    except (SafetensorError, OSError, KeyError, ValueError) as error:
        raise DiracError(f"{location} is not a diraccodec training checkpoint ({file_fault(error)})") from None


def load_checkpoint_metadata(path: Path) -> TrainingState:
    """The state without its tensors (read from the head of the first part alone)."""
    location = _stored_at(path)
    if location is None:
        raise DiracError(f"no training state at {state_folder(path)}")
    try:
        if location.is_dir():
            with open(location / f"{PART_PREFIX}000", "rb") as first:
                length = struct.unpack("<Q", first.read(8))[0]
                head = first.read(length)
            if len(head) < length:  # a header longer than a part: read the whole stream
                return read_state(path)[0]
            return _state_from_header(_header_of(struct.pack("<Q", length) + head))
        return _file_state(location)
    except (SafetensorError, OSError, KeyError, ValueError, struct.error) as error:
        raise DiracError(f"{location} is not a diraccodec training checkpoint ({file_fault(error)})") from None


def _header_of(stream: bytes) -> dict[str, str]:
    """The string metadata of a safetensors stream."""
    length = struct.unpack("<Q", stream[:8])[0]
    return dict(json.loads(stream[8 : 8 + length]).get("__metadata__", {}))


def _state_from_header(header: dict[str, str]) -> TrainingState:
    warmup_from = header.get("warmup_from")
    return TrainingState(int(header["step"]), float(header["seconds"]), json.loads(header["meta"]),
                         int(warmup_from) if warmup_from is not None else None)


def _file_state(path: Path) -> TrainingState:
    with safe_open(str(path), framework="pt") as handle:
        return _state_from_header(handle.metadata() or {})


def _read_legacy(path: Path) -> tuple[TrainingState, dict[str, torch.Tensor]]:
    """An older checkpoint file with its Adam moments file beside it, renamed to today's tensor names."""
    state = _file_state(path)
    tensors = load_file(str(path))
    moments_file = _legacy_files(state_folder(path))[1]
    if moments_file.exists():
        moments_step = _file_state(moments_file).step
        if moments_step != state.step:
            raise DiracError(f"{moments_file} is from step {moments_step}, the model from {state.step}")
        tensors.update(load_file(str(moments_file)))
    for old, new in (("rng", RNG_PREFIX + "data"), ("rng_global", RNG_PREFIX + "torch")):
        if old in tensors:
            tensors[new] = tensors.pop(old)
    return state, tensors


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Adam,
    generator: torch.Generator | None,
    state: TrainingState,
    average: WeightAverage | None = None,
    part_bytes: int = DEFAULT_PART_BYTES,
    moments_dtype: torch.dtype = MOMENTS_DTYPE,
) -> list[Path]:
    """Save a run: weights, average, Adam moments (in `moments_dtype`) and every RNG; returns the parts."""
    tensors = {MODEL_PREFIX + k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if average is not None:
        tensors.update(average.state_tensors())
    for index, moments in optimizer.state_dict()["state"].items():
        for name in ("exp_avg", "exp_avg_sq"):
            tensors[f"{ADAM_PREFIX}{index}.{name}"] = moments[name].detach().to("cpu", moments_dtype).contiguous()
        tensors[f"{ADAM_PREFIX}{index}.step"] = torch.as_tensor(moments["step"]).reshape(1).float().cpu()
    tensors[RNG_PREFIX + "torch"] = torch.get_rng_state()
    if generator is not None:
        tensors[RNG_PREFIX + "data"] = generator.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"{RNG_PREFIX}cuda.{index}"] = cuda_state
    return write_state(path, tensors, state, part_bytes)


def model_weights(tensors: dict[str, torch.Tensor], prefer_average: bool = False) -> dict[str, torch.Tensor]:
    """The model's state dict in a state's tensors; its weight average instead where asked and kept."""
    weights = {k.removeprefix(MODEL_PREFIX): v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)}
    if prefer_average and AVERAGE_PREFIX + "updates" in tensors:
        weights = {k: tensors.get(AVERAGE_PREFIX + k, v) for k, v in weights.items()}
    return weights


def load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Adam | None,
    generator: torch.Generator | None,
    average: WeightAverage | None = None,
    prefer_average: bool = False,
) -> TrainingState:
    """Restore a run. `average` takes the state's weight average (or starts one from the loaded
    weights when it holds none); `prefer_average` loads that average into the model instead of
    the last step's weights, as export does. With a generator, every RNG is restored too."""
    state, tensors = read_state(path)
    model.load_state_dict(model_weights(tensors, prefer_average))
    if average is not None and not average.load_state_tensors(tensors):
        average.reset(model)
    if optimizer is not None:
        _load_moments(optimizer, tensors)
    if generator is not None:
        _restore_generators(generator, tensors)
    return state


def _load_moments(optimizer: torch.optim.Adam, tensors: dict[str, torch.Tensor]) -> None:
    """Adam's moments back in the parameters' dtype, device and memory layout (stored at lower precision)."""
    moments = {}
    for index, param in enumerate(p for group in optimizer.param_groups for p in group["params"]):
        if f"{ADAM_PREFIX}{index}.exp_avg" in tensors:
            moments[index] = {
                "step": tensors[f"{ADAM_PREFIX}{index}.step"][0].clone(),
                **{name: torch.empty_like(param).copy_(tensors[f"{ADAM_PREFIX}{index}.{name}"])
                   for name in ("exp_avg", "exp_avg_sq")},
            }
    if moments:
        optimizer.load_state_dict({"state": moments, "param_groups": optimizer.state_dict()["param_groups"]})


def _restore_generators(generator: torch.Generator, tensors: dict[str, torch.Tensor]) -> None:
    """The global CPU RNG, CUDA's and the data generator's. A run moved between CPU and CUDA
    (whose generators differ in kind) keeps its fresh data generator: it cannot resume exactly."""
    if RNG_PREFIX + "torch" in tensors:
        torch.set_rng_state(tensors[RNG_PREFIX + "torch"])
    data = tensors.get(RNG_PREFIX + "data")
    if data is not None and data.numel() == generator.get_state().numel():
        generator.set_state(data)
    cuda_states = [tensors[name] for name in sorted(tensors) if name.startswith(RNG_PREFIX + "cuda.")]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)


def write_travel_copy(path: Path, destination: Path, dtype: torch.dtype = torch.float16, moments: bool = False,
                      part_bytes: int = DEFAULT_PART_BYTES) -> list[Path]:
    """A smaller copy of a state to carry to another machine: weights and average in `dtype`, the
    Adam moments (bfloat16) only where asked. A run resumed from it is close, not exact; without
    moments its learning rate ramps up again."""
    state, tensors = read_state(path)
    copy: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if name.startswith(ADAM_PREFIX):
            if moments:
                copy[name] = tensor if name.endswith(".step") else tensor.to(MOMENTS_DTYPE)
        elif name.startswith((MODEL_PREFIX, AVERAGE_PREFIX)) and tensor.is_floating_point():
            copy[name] = tensor.to(dtype)
        else:
            copy[name] = tensor
    return write_state(destination, copy, state, part_bytes)
