"""Where and how the networks run: the device, the fast kernels, and the exact mode; also the
replay of CUDA graphs (GraphReplay) and the totals of a torch profile (profile_totals).

The default is fast: oneDNN's convolutions on channels-last tensors on a CPU (cuDNN on a
GPU), and bfloat16 for the diffusion U-Net and the encoder's latent search where the device
computes it natively (a decode's synthesis and restoration stay float32). Its sums
follow the thread count and the kernels chosen, so pixels may differ from another machine's
by the tolerance that docs/format.md states; the entropy decoding, which must be exact, never
runs in this mode (see diraccodec.entropy.latent_stream).

The exact mode (`exact=True`, `dirac decode --exact`) gives pixels that do not depend on the
thread count. Two kinds of kernel sum in an order that follows the thread count: oneDNN's convolutions
(it picks its blocking by threads) and MKL's sgemm, which the plain im2col convolutions
call (on AVX-512 machines it splits its sums by threads). The reproducible paths turn
oneDNN off, and MKL gives the same sums with any thread count in its strict conditional
numerical reproducibility (CNR) mode. MKL reads that mode once, at its first call, so
`options.request_strict_mkl` (run when diraccodec is imported) asks for it through MKL_CBWR; where
that came too late (MKL already used in this process) or MKL_CBWR chose otherwise, the
reproducible paths run in one thread, and a warning says the last bit may then differ from
other processes'.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import functools
import os
import platform
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.autograd import DeviceType

from diraccodec.errors import warn
from diraccodec.options import AUTO, STRICT_MKL

_MKL_CBWR_ALL = -1  # mkl_cbwr_get's query for the whole setting
_MKL_CBWR_STRICT = 0x10000


@functools.cache
def mkl_is_strict() -> bool | None:
    """Whether MKL runs in strict CNR mode; None where torch does not use MKL or cannot say."""
    if not torch.backends.mkl.is_available():
        return None
    try:  # MKL is linked into torch's CPU library, which exports its service functions
        library = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        get_mode = library.mkl_serv_cbwr_get
    except (OSError, AttributeError):
        return None
    get_mode.argtypes, get_mode.restype = [ctypes.c_int], ctypes.c_int
    mode = get_mode(_MKL_CBWR_ALL)
    return mode >= 0 and bool(mode & _MKL_CBWR_STRICT)


@contextlib.contextmanager
def thread_count_restored() -> Iterator[None]:
    """Torch's thread count as it was on entry, whatever the body sets. Also a decorator, for
    functions that set the count for their own work (training's --threads): a library call
    leaves no process-wide change behind."""
    previous = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    with thread_count_restored():
        torch.set_num_threads(1)
        yield


@contextlib.contextmanager
def thread_invariant() -> Iterator[None]:
    """Convolutions whose sums, and so pixels, are the same with any number of threads."""
    mkl_loose = mkl_is_strict() is False
    if mkl_loose:
        _warn_not_strict()  # before any state changes: under -W error it raises
    previous = torch.backends.mkldnn.enabled
    try:
        torch.backends.mkldnn.enabled = False
        with single_thread() if mkl_loose else contextlib.nullcontext():
            yield
    finally:
        torch.backends.mkldnn.enabled = previous


@contextlib.contextmanager
def float32_default() -> Iterator[None]:
    """torch's default dtype float32 for the block, whatever the caller set: under a float64
    default the models (loaded and cached then) and the tensors made along the way disagree."""
    previous = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float32)
        yield
    finally:
        torch.set_default_dtype(previous)


@contextlib.contextmanager
def without_callers_autocast() -> Iterator[None]:
    """No mixed precision from a caller's torch.autocast: the codec's arithmetic is its own
    (Compute.autocast sets the U-Net's inside). Turned off only where the caller turned it on,
    which asks nothing of CUDA (a call on device="cpu" leaves a child forked later free to
    use it)."""
    with contextlib.ExitStack() as stack:
        for device_type in ("cpu", "cuda"):
            if torch.is_autocast_enabled(device_type):
                stack.enter_context(torch.autocast(device_type, enabled=False))
        yield


def _one_thread() -> None:
    torch.set_num_threads(1)


@functools.cache
def one_thread_in_forked_children() -> None:
    """A process forked once the codec has run (multiprocessing's default on Linux) gets one
    torch thread: the OpenMP thread pool the parent started does not survive fork, and the
    child's first parallel kernel would wait for it forever. Spawned processes are not
    touched. Registered once, at the codec's first call; Windows has no fork."""
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_one_thread)


@contextlib.contextmanager
def full_float32(device_type: str | None = None) -> Iterator[None]:
    """Float32 convolutions and matrix products in full float32 on `device_type`'s backends
    (None: every one): on a GPU not TF32 (cuDNN's default for convolutions, a 10-bit mantissa),
    on a CPU not the bfloat16 that a caller's `torch.backends.fp32_precision = "bf16"` or
    matrix precision "medium" lets oneDNN use. The synthesis and the restoration filter set a
    0-step decode's fidelity and are meant to run in float32 on every device. Set and put back
    through torch's per-operation precision where it has one (torch 2.9 on): the older flags
    cannot hold every setting ("medium"), and reading them after a caller used the newer
    interface raises. Before 2.9 the matrix products' setting is saved and put back with
    torch.get_/set_float32_matmul_precision, whose names hold "medium" too, for a GPU only."""
    matmul, cudnn, mkldnn = torch.backends.cuda.matmul, torch.backends.cudnn, torch.backends.mkldnn
    newer = hasattr(matmul, "fp32_precision") and hasattr(cudnn, "conv")
    operations = []  # each with its precision, set to "ieee"
    if device_type in (None, "cuda") and newer:
        operations += [matmul, cudnn.conv]
    if device_type in (None, "cpu") and hasattr(mkldnn, "conv") and hasattr(mkldnn, "matmul"):
        # oneDNN's only where the caller lowered them: an untouched setting stays untouched
        operations += [op for op in (mkldnn.conv, mkldnn.matmul) if op.fp32_precision not in ("ieee", "none")]
    previous = [op.fp32_precision for op in operations]
    # before 2.9 the matrix products' setting is one for every device: a CPU call leaves it
    older_cuda = device_type in (None, "cuda") and not newer
    old_flag = cudnn.allow_tf32 if older_cuda else None
    matmul_precision = torch.get_float32_matmul_precision() if older_cuda else None
    try:
        for op in operations:
            op.fp32_precision = "ieee"
        if old_flag is not None:
            cudnn.allow_tf32 = False
        if matmul_precision is not None:
            torch.set_float32_matmul_precision("highest")
        yield
    finally:
        for op, value in zip(operations, previous, strict=True):
            _put_back(op, value)
        if old_flag is not None:
            cudnn.allow_tf32 = old_flag
        if matmul_precision is not None:
            torch.set_float32_matmul_precision(matmul_precision)


def _put_back(operation: Any, value: str) -> None:
    """An operation's precision as the caller had it. torch reads an operation's "none" through
    its backend's and the global setting, and its getter tells only the outcome: where "none"
    gives that outcome, "none" is put back, so that the operation follows the caller's later
    settings again rather than keep this value for good. (torch's own first value for cuDNN's
    convolutions, "tf32", which a global setting still replaces, comes back as if the caller
    had set it, as it did before torch had these settings.)"""
    operation.fp32_precision = "none"
    if operation.fp32_precision != value:
        operation.fp32_precision = value


@functools.cache
def _warn_not_strict() -> None:
    warn(
        f"MKL is not in strict reproducible mode (it was used before diraccodec was imported, or "
        f"MKL_CBWR={os.environ.get('MKL_CBWR')!r}); decoding runs in one thread, and decoded pixels may "
        f"differ in the last bit from other processes'. Import diraccodec first, or set MKL_CBWR={STRICT_MKL}",
        RuntimeWarning,
    )


CPU = torch.device("cpu")

CPU_INFO = "/proc/cpuinfo"


@functools.cache
def cpu_description() -> str:
    """The CPU's model (with its family and model numbers where Linux gives them: a virtual
    machine's name alone may not tell its generation) and the widest vector instructions torch
    uses on it, e.g. "AMD EPYC, family 25 model 17 (AVX512)". Speed figures record it: they
    vary several-fold across CPU kinds."""
    fields: dict[str, str] = {}
    try:
        with open(CPU_INFO) as lines:
            for line in lines:
                key, _, value = line.partition(":")
                if not key.strip():
                    break  # the first processor's block is enough
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        name += f", family {fields['cpu family']} model {fields['model']}"
    return f"{name} ({torch.backends.cpu.get_cpu_capability()})"


def cuda_available() -> bool:
    return torch.cuda.is_available()


def available_devices() -> list[str]:
    """The devices this process can run on, the CPU first."""
    return ["cpu", *([f"cuda ({torch.cuda.get_device_name(0)})"] if cuda_available() else [])]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto' (or None): CUDA where present, else the CPU; otherwise the named device."""
    if device is None or str(device) == AUTO:
        return torch.device("cuda" if cuda_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r} (use auto, cpu or cuda)") from None
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r} (use auto, cpu or cuda)")
    if resolved.type == "cuda" and not cuda_available():
        raise ValueError("device cuda was asked for, but this machine has no CUDA device (use auto or cpu)")
    return resolved


CUDA_GRAPHS_ENV = "DIRAC_CUDA_GRAPHS"  # "1": the sampler's steps replay CUDA graphs (off by default)


class GraphReplay:
    """`function` (tensors in, one tensor out) replayed from a CUDA graph captured once per
    input shape: a step of a small network then costs one launch instead of hundreds, which
    is what bounds it on a GPU. The graphs (and their memory) live as long as this object;
    `trim` keeps the `max_graphs` last used, between pieces of work (a decode whose tiles
    come in more shapes keeps them all while it runs: dropping one it uses again at the next
    step would capture it again every step). The inputs are copied into the graph's own
    buffers and the output copied out, so the caller sees plain tensors."""

    WARMUP_CALLS = 2  # on a side stream before capture: cuDNN picks its kernels, lazy state settles

    def __init__(self, function: Callable[..., torch.Tensor], max_graphs: int = 4) -> None:
        self.function, self.max_graphs = function, max_graphs
        self.graphs: OrderedDict[tuple, tuple[torch.cuda.CUDAGraph, list[torch.Tensor], torch.Tensor]] = OrderedDict()
        self.refused: set[tuple] = set()
        self.captures = 0  # graphs captured so far, dropped ones too

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        key = tuple((tuple(tensor.shape), tensor.dtype, tensor.stride()) for tensor in inputs)
        if key in self.refused:
            return self.function(*inputs)
        if key not in self.graphs:
            try:
                self.graphs[key] = self._capture([tensor.clone() for tensor in inputs])
            except RuntimeError as error:  # an operation capture does not allow: run as it is
                warn(f"CUDA graph capture failed, running without it: {error}")
                self.refused.add(key)
                return self.function(*inputs)
            self.captures += 1
        self.graphs.move_to_end(key)
        graph, buffers, output = self.graphs[key]
        for buffer, tensor in zip(buffers, inputs, strict=True):
            buffer.copy_(tensor)
        graph.replay()
        return output.clone()

    def trim(self) -> None:
        """Drop all but the `max_graphs` graphs last used, and their memory."""
        while len(self.graphs) > self.max_graphs:
            self.graphs.popitem(last=False)

    def _capture(self, buffers: list[torch.Tensor]) -> tuple[torch.cuda.CUDAGraph, list[torch.Tensor], torch.Tensor]:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.WARMUP_CALLS):
                self.function(*buffers)
        torch.cuda.current_stream().wait_stream(side)
        graph, capturing = torch.cuda.CUDAGraph(), torch.cuda.Stream()
        torch.cuda.synchronize()
        # begun and ended here, not by torch.cuda.graph, whose exit after a failed capture can
        # leave this thread on the capture stream: the caller then runs the function as it is
        with torch.cuda.stream(capturing):
            graph.capture_begin()
            try:
                output = self.function(*buffers)
            finally:
                graph.capture_end()
        torch.cuda.current_stream().wait_stream(capturing)
        return graph, buffers, output


# Layers whose weights autocast casts to its dtype at every call, for CPU and CUDA alike.
AUTOCAST_CAST_LAYERS = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose1d,
                        torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d, torch.nn.Linear)


@functools.cache
def cpu_computes_bfloat16() -> bool:
    """Whether oneDNN runs bfloat16 convolutions natively on this CPU (AVX-512 BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass(frozen=True)
class Compute:
    """A device and a mode: what every network stage is given, and the key of its model cache."""

    device: torch.device = CPU
    exact: bool = False  # thread-invariant float32 kernels: slower, pixels independent of threads

    @classmethod
    def of(cls, device: str | torch.device | None = AUTO, exact: bool = False) -> Compute:
        return cls(resolve_device(device), exact)

    @property
    def memory_format(self) -> torch.memory_format:
        """Channels-last lets oneDNN and cuDNN skip their reorders; the exact kernels take plain tensors."""
        return torch.contiguous_format if self.exact else torch.channels_last

    @property
    def low_precision(self) -> torch.dtype | None:
        """The dtype the diffusion U-Net and the encoder's latent search (its synthesis and
        restoration filter) may run in (None: float32): bfloat16 on a GPU and on CPUs that compute
        it natively, never in the exact mode. Its error stays far below one grey level of the
        finished image, where a decode's fidelity stages (synthesis, restoration) stay float32:
        the search only picks latents, which are coded exactly."""
        if self.exact:
            return None
        if self.device.type == "cuda" or cpu_computes_bfloat16():
            return torch.bfloat16
        return None

    def prepare(self, module: torch.nn.Module) -> torch.nn.Module:
        """A copy of `module` on this device, in this mode's memory format, for inference.

        A copy, because the caller's module may serve other devices: moving it in place would
        pull it away from them."""
        prepared = copy.deepcopy(module).to(self.device).eval().requires_grad_(False)
        return prepared.to(memory_format=self.memory_format)

    def prepare_for_autocast(self, module: torch.nn.Module) -> torch.nn.Module:
        """`prepare`, for a module that runs only under `autocast`: the weights and biases that
        autocast casts at every call (convolutions, linear layers) are stored in `low_precision`
        already. The sums are the same, without two casts per layer and call: in a U-Net step
        that is over half of the casts (each a kernel launch on a GPU)."""
        prepared = self.prepare(module)
        if self.low_precision is not None:
            for layer in prepared.modules():
                if isinstance(layer, AUTOCAST_CAST_LAYERS):
                    layer.to(self.low_precision)
        return prepared

    def tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` on this device in this mode's memory format (4-D tensors only are reformatted)."""
        tensor = tensor.to(self.device)
        return tensor.contiguous(memory_format=self.memory_format) if tensor.dim() == 4 else tensor

    def tile(self, cpu_tile: int) -> int:
        """The tile side for a network whose CPU tile is `cpu_tile`: a GPU takes tiles 4x wider
        (16x the pixels), so that a 12-megapixel photo runs in a few launches and memory still
        stays bounded on a 50-megapixel one."""
        return cpu_tile if self.device.type == "cpu" else 4 * cpu_tile

    def kernels(self) -> contextlib.AbstractContextManager[None]:
        """The context the networks run in: thread-invariant kernels in the exact mode on a CPU,
        full float32 otherwise (no TF32 on a GPU, no bfloat16 from oneDNN on a CPU), whatever
        precision the caller allowed torch."""
        if self.device.type == "cpu" and self.exact:
            return thread_invariant()
        return full_float32(self.device.type)

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """Mixed precision for the diffusion U-Net and the encoder's search where `low_precision`
        allows it (its cast cache off: inference weights are never cached, and CUDA graph capture
        forbids the cache)."""
        dtype = self.low_precision
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype, cache_enabled=False)

    @property
    def uses_graphs(self) -> bool:
        """Whether networks replay CUDA graphs: on a GPU, where $DIRAC_CUDA_GRAPHS is 1."""
        return self.device.type == "cuda" and os.environ.get(CUDA_GRAPHS_ENV) == "1"

    def replayed(self, function: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        """`function` replayed from CUDA graphs where `uses_graphs`; elsewhere `function` itself."""
        return GraphReplay(function) if self.uses_graphs else function


# torch's profiler's names for a launch: the runtime's and the driver's calls, their extended
# forms (cudaLaunchKernelExC, cuLaunchKernelEx: cuDNN 9, cuBLASLt) and a CUDA graph's replay
KERNEL_LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaGraphLaunch")


def profile_totals(events: list) -> dict[str, float]:
    """What torch's profiler saw (its `key_averages()`), in figures a log line can carry: the
    CPU's and the device's own seconds, each kernel counted once (as torch's tables count it:
    on the device's events, not again on the operators that launched them), and the launches."""
    device_seconds = sum(event.self_device_time_total for event in events
                         if event.device_type != DeviceType.CPU and not event.is_user_annotation) / 1e6
    return {"CPU seconds": sum(event.self_cpu_time_total for event in events) / 1e6,
            "device seconds": device_seconds,
            "kernel launches": sum(event.count for event in events if event.key.startswith(KERNEL_LAUNCHES))}
