"""Where and how training runs: device, precision and processes, through Hugging Face Accelerate.

Accelerate (a dependency already, for adapters) joins the process group `torchrun` set up (NCCL on GPUs,
gloo on CPUs), wraps the model in DistributedDataParallel, and owns autocast and fp16 gradient scaling.
headstart keeps what Accelerate does not decide: which device a flag names, which precision `auto` means
(on a CPU a timed step decides, remembered per backbone, machine and thread count), and that every process
agrees on when to stop. See docs/engine.md for why Accelerate rather than Lightning Fabric.

    engine = Engine.create(device="auto", precision="auto")   # resolves the device, joins the processes
    engine.start(engine.choose_precision(timer=..., memo_key=...))
    model = engine.prepare(net); loss = ...; engine.backward(loss)
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from headstart.errors import HeadstartError
from headstart.train import precision
from headstart.train.precision import BF16_MARGIN, timed_steps

if TYPE_CHECKING:
    import torch
    from torch import nn

DEVICES = "auto, cpu, cuda, cuda:N or mps"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICE_HELP = "auto (CUDA if present, else MPS, else CPU), cpu, cuda, cuda:N or mps"
BACKEND_HELP = (
    "what runs the frozen backbone: auto (ONNX Runtime on a CPU, PyTorch on a GPU), onnx (CPU only: the "
    "onnxruntime CPU build), torch"
)
PRECISION_HELP = (
    "auto: bf16 on GPUs that have it; on a CPU bf16 only where a timed step is faster (remembered)"
)
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_MIXED = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


def check_device(spec: str) -> str:
    """The flag's syntax, checked before any work (whether the device exists is checked by resolve_device)."""
    if not _DEVICE_RE.match(spec):
        raise HeadstartError(f"--device {spec!r} is not a device", fix=f"give {DEVICES}")
    return spec


def device_arg(text: str) -> str:
    """argparse type of --device: a bad value is a usage error (exit 2) that names it and the choices."""
    import argparse

    try:
        return check_device(text)
    except HeadstartError as e:
        raise argparse.ArgumentTypeError(f"{e.message} (fix: {e.fix})") from None


def check_precision(spec: str) -> str:
    if spec not in PRECISIONS:
        raise HeadstartError(f"--precision {spec!r} is not a precision", fix=f"give one of {PRECISIONS}")
    return spec


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """`auto`: CUDA when present, else Apple's MPS, else the CPU. A device that is absent is an error."""
    import torch

    spec = str(spec)
    check_device(spec)
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if spec == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not cuda:
        raise HeadstartError(
            f"--device {spec}: no CUDA GPU is visible to PyTorch here ({torch.__version__})",
            fix="use --device cpu (or auto), or install a CUDA build of PyTorch on a GPU machine",
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise HeadstartError(
            f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)",
            fix=f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}, or cuda",
        )
    if dev.type == "mps" and not mps:
        raise HeadstartError(f"--device {spec}: MPS is not available here", fix="use --device cpu (or auto)")
    return dev


def check_engine(device: str, precision: str) -> torch.device:
    """Both flags, checked before any work: the device is here and runs the precision asked (under
    torchrun, each process takes the GPU of its local rank). Returns the device."""
    check_precision(precision)
    dev = resolve_device(device)
    if world_from_env()[1] > 1 and dev.type == "cuda" and dev.index is not None:
        raise HeadstartError(
            f"--device {device} under torchrun: each process takes the GPU of its local rank",
            fix="give --device cuda (or auto) when launching with torchrun",
        )
    if precision != "auto":
        Engine(dev)._check_supported(precision)
    return dev


def world_from_env() -> tuple[int, int]:
    """(rank, world size) of a `torchrun` launch, read from its environment before any process group
    exists (what Accelerate reads too); (0, 1) in a plain process."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0, or a plain process: the one that writes checkpoints and runs."""
    return world_from_env()[0] == 0


def place(obj: Any, device: torch.device, *, non_blocking: bool = False) -> Any:
    """Modules moved in place (parameters keep their identity, so optimizers stay valid); tensors, and
    dicts/lists/tuples of them, copied to `device`; anything else returned as is. `non_blocking`: the copy
    of pinned CPU tensors to a GPU overlaps with what runs there (see `pin`)."""
    from torch import nn

    if isinstance(obj, nn.Module):
        return obj.to(device)
    from accelerate.utils import send_to_device

    return send_to_device(obj, device, non_blocking=non_blocking)


def pin(obj: Any) -> Any:
    """CPU tensors (and dicts/lists/tuples of them) in page-locked memory, from which a copy to a CUDA GPU
    runs asynchronously; anything else as is. Worth it only for a CUDA device (pinning costs a copy)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.pin_memory() if obj.device.type == "cpu" else obj
    if isinstance(obj, dict):
        return type(obj)({k: pin(v) for k, v in obj.items()})
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(pin(v) for v in obj)
    return obj


def module_device(module: nn.Module) -> torch.device:
    """Where a module's weights are (the CPU for one without any)."""
    import torch

    first = next(iter(module.parameters()), None)
    if first is None:
        first = next(iter(module.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on `device`: GPU calls return before the work is done, so a timing that
    does not wait measures the launch, not the work."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _indexed(device: torch.device) -> torch.device:
    """`cuda` as the numbered GPU it means (the current one), so two names of one GPU compare equal."""
    import torch

    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


@contextlib.contextmanager
def placed(module: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """`module` on `device` for the block, then back where it was: inference (embedding, latency) runs on
    the device asked without moving a caller's model for good (a model left on a GPU would break the next
    CPU-side use of it, e.g. an ONNX export). A no-op when it is there already."""
    home = module_device(module)
    if _indexed(home) == _indexed(device):
        yield module
        return
    place(module, device)
    try:
        yield module
    finally:
        place(module, home)


def _forward_wrapper(module: nn.Module) -> nn.Module:
    """A thin module whose forward calls `module`: Accelerate patches the forward of what it prepares
    (autocast), so it patches this wrapper and `module` itself keeps evaluating in float32."""
    from torch import nn

    class Forward(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            return self.inner(*args, **kwargs)

    return Forward(module)


@dataclass
class Engine:
    """A resolved device and precision, this process's rank and the world size, and (once `start`ed) the
    Accelerator that runs the steps. Build it with `Engine.create`; a bare `Engine(device)` places only."""

    device: torch.device
    asked: str = "fp32"  # the --precision flag
    precision: str = "fp32"  # what runs: fp32, bf16 or fp16
    reason: str = "asked"  # why that precision
    rank: int = 0
    world: int = 1
    timings: dict[str, float] = field(default_factory=dict)  # seconds per timed step, when auto measured
    accelerator: Any = None

    @classmethod
    def create(cls, device: str = "auto", precision: str = "auto") -> Engine:
        """Resolve `device`, check an explicit precision against it, and join torchrun's processes."""
        import torch

        dev = check_engine(device, precision)
        rank, world = world_from_env()
        if world > 1:
            state = _partial_state(dev)
            rank, world = state.process_index, state.num_processes
            dev = state.device if dev.type != "cpu" else dev  # (Accelerate calls the CPU "cpu:0")
        elif dev.type == "cuda" and dev.index is not None:
            torch.cuda.set_device(dev)  # Accelerate uses "the current CUDA device" in one process
        return cls(device=dev, asked=precision, precision=precision, rank=rank, world=world)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def _check_supported(self, precision: str) -> None:
        import torch

        kind = self.device.type
        if precision == "fp16" and kind == "cpu":
            raise HeadstartError(
                "--precision fp16 on the CPU: PyTorch has no fp16 autocast training on CPUs",
                fix="use --precision bf16 (or auto, or fp32) on a CPU",
            )
        if precision == "bf16" and kind == "cuda" and not torch.cuda.is_bf16_supported():
            raise HeadstartError(
                f"--precision bf16: the GPU {torch.cuda.get_device_name(self.device)} has no bf16",
                fix="use --precision fp16 (or auto, or fp32)",
            )

    # -- precision -----------------------------------------------------------------------------------------
    def choose_precision(
        self, timer: Callable[[str], float] | None = None, memo_key: str | None = None
    ) -> str:
        """What `auto` means here: bf16 on a GPU that has it; fp32 on MPS; on a CPU with native bf16, bf16
        only when `timer(precision)` (seconds of one training step) says it is clearly faster. The timing
        is remembered in the headstart cache under `memo_key` and this machine; every process decides
        the same (fp32 unless all found bf16 faster). An explicit precision is returned as asked."""
        import torch

        if self.asked != "auto":
            self.precision, self.reason = self.asked, "asked"
            return self.precision
        kind = self.device.type
        if kind == "cuda":
            bf16 = torch.cuda.is_bf16_supported()
            self.precision = "bf16" if bf16 else "fp32"
            self.reason = "auto: the GPU supports bf16" if bf16 else "auto: the GPU has no bf16"
        elif kind != "cpu":
            self.precision, self.reason = "fp32", f"auto: fp32 on {kind}"
        elif not precision.cpu_has_bf16():
            self.precision, self.reason = "fp32", "auto: this CPU has no native bf16 (AVX-512 BF16 / AMX)"
        elif timer is None:
            self.precision, self.reason = "fp32", "auto: nothing to time (no training step)"
        else:
            self.timings = timed_steps(timer, memo_key, write=self.main)
            faster = self.timings["bf16_s"] < (1 - BF16_MARGIN) * self.timings["fp32_s"]
            faster = not self.agree(not faster)
            self.precision = "bf16" if faster else "fp32"
            self.reason = (
                f"auto: a timed step took {self.timings['bf16_s'] * 1e3:.1f} ms in bf16, "
                f"{self.timings['fp32_s'] * 1e3:.1f} ms in fp32"
            )
        return self.precision

    # -- running -------------------------------------------------------------------------------------------
    def start(self, precision: str | None = None) -> None:
        """Build the Accelerator for this device and precision. Accelerate keeps one process-wide state and
        refuses a second Accelerator with another precision; headstart trains several models per process
        (compare, adapt's phases, tests), so that state is reset first (the process group is kept)."""
        import torch
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        if precision is not None:
            self.precision = precision
        self._check_supported(self.precision)
        AcceleratorState._reset_state(reset_partial_state=not torch.distributed.is_initialized())
        self.accelerator = Accelerator(
            cpu=self.device.type == "cpu", mixed_precision=_MIXED[self.precision], device_placement=False
        )

    def place(self, obj: Any) -> Any:
        # non_blocking: a batch in pinned memory (see train.activations) copies while the GPU works
        return place(obj, self.device, non_blocking=self.device.type == "cuda")

    def prepare(self, model: nn.Module) -> nn.Module:
        """The module to train with: DistributedDataParallel across processes, autocast for bf16/fp16
        (through a wrapper, so `model` itself still evaluates in float32); `model` itself otherwise."""
        if self.accelerator is None or (self.world == 1 and self.precision == "fp32"):
            return model
        return self.accelerator.prepare_model(_forward_wrapper(model), device_placement=False)

    def prepare_optimizer(self, optimizer: Any) -> Any:
        """fp16 steps through Accelerate's wrapper (gradient scaling); other precisions use it as is."""
        if self.accelerator is None or self.precision != "fp16":
            return optimizer
        return self.accelerator.prepare_optimizer(optimizer, device_placement=False)

    def no_sync(self, model: nn.Module, skip: bool) -> contextlib.AbstractContextManager[Any]:
        """With `skip`, gradients accumulate locally (a micro-batch that is not the step's last one)."""
        if skip and self.world > 1 and hasattr(model, "no_sync"):
            return model.no_sync()
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        if self.accelerator is None:
            loss.backward()
        else:
            self.accelerator.backward(loss)

    def clip_grad_norm_(self, params: list[Any], max_norm: float) -> None:
        import torch

        if self.accelerator is None:
            torch.nn.utils.clip_grad_norm_(params, max_norm)
        else:
            self.accelerator.clip_grad_norm_(params, max_norm)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast at the chosen precision (a no-op in fp32), for forwards outside the prepared model."""
        if self.accelerator is None or self.precision == "fp32":
            return contextlib.nullcontext()
        return self.accelerator.autocast()

    def agree(self, flag: bool) -> bool:
        """True on every process when it is True on any: stop decisions (budget, early stopping) taken by
        one process alone would leave another waiting forever in the next gradient all-reduce."""
        return flag if self.world <= 1 else self.sum_over_processes([float(flag)])[0] > 0

    def sum_over_processes(self, values: list[float]) -> list[float]:
        """`values` summed over every process (as they are in one process)."""
        if self.world <= 1:
            return list(values)
        import torch
        from accelerate.utils import reduce

        return reduce(torch.tensor(values, dtype=torch.float64, device=self.device), reduction="sum").tolist()

    def describe(self) -> dict[str, Any]:
        """What run.json records: where and how the run trained."""
        import accelerate

        out: dict[str, Any] = {
            "device": str(self.device),
            "precision": self.precision,
            "precision_asked": self.asked,
            "precision_reason": self.reason,
            "world_size": self.world,
            "engine": f"accelerate {accelerate.__version__}",
        }
        if self.timings:
            out["step_seconds"] = {k: round(v, 5) for k, v in self.timings.items()}
        return out


def _partial_state(dev: torch.device) -> Any:
    """Accelerate's view of the torchrun processes (it initialises the process group: gloo on CPUs)."""
    import atexit

    from accelerate import PartialState

    state = PartialState(cpu=dev.type == "cpu")
    atexit.register(_close_process_group)
    return state


def _close_process_group() -> None:
    """Tear the process group down before the interpreter exits: gloo's threads still running at exit
    abort the process ("terminate called without an active exception"), failing a run that succeeded."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
