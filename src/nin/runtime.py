"""Where training runs: the device, and the process group when started by torchrun.

`torchrun --nproc_per_node=N -m nin train ...` sets RANK, LOCAL_RANK and WORLD_SIZE; every rank then
runs the same program on its shard of each batch, and DistributedDataParallel averages gradients.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from nin.errors import NinError


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise NinError("--device cuda: no CUDA device is available to this PyTorch; use --device cpu or auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise NinError("--device mps: MPS is not available here; use --device cpu or auto")
    return torch.device(name)


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for `--precision` on `device`; None means plain fp32.

    bf16 autocast runs convolutions and matmuls in bf16 (weights, gradients and the SGD update stay
    fp32). It pays only where the hardware computes bf16 natively: CUDA GPUs from Ampere on, and
    CPUs with AVX-512 BF16 or AMX. Elsewhere oneDNN emulates it, several times slower than fp32.
    """
    if precision == "fp32":
        return None
    if device.type not in ("cpu", "cuda"):
        if precision == "bf16":
            raise NinError(f"--precision bf16 runs on cpu or cuda, not {device.type}; use --precision fp32")
        return None
    native = torch.cuda.is_bf16_supported() if device.type == "cuda" else torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if precision == "auto":
        return torch.bfloat16 if native else None
    if not native:
        print(f"warning: --precision bf16 on a {device.type} without native bf16 is emulated and slow; "
              "--precision fp32 or auto is faster here", file=sys.stderr)  # fmt: skip
    return torch.bfloat16


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that timers measure it (d2l's float() on the loss does the same)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    dtype: torch.dtype | None = None  # autocast dtype; None: fp32
    rank: int = 0
    world_size: int = 1

    @property
    def precision(self) -> str:
        """The precision that runs: 'bf16' (autocast) or 'fp32'."""
        return "bf16" if self.dtype == torch.bfloat16 else "fp32"

    def autocast(self) -> torch.autocast:
        """The one autocast of nin: bf16 where `dtype` says so, else a no-op."""
        return torch.autocast(self.device.type, self.dtype, enabled=self.dtype is not None)

    @property
    def check_every(self) -> int:
        """Steps between a training loop's host syncs (divergence and signal checks, step timing): every
        step on a CPU, where reading the loss costs nothing; every 25th on a GPU, where each read stalls
        the queue of launched kernels."""
        return 1 if self.device.type == "cpu" else 25

    @property
    def is_main(self) -> bool:
        """Rank 0 alone prints, and writes the run directory."""
        return self.rank == 0

    def all_sum(self, *values: float) -> list[float]:
        """Sum numbers over all ranks (with one rank: the numbers themselves)."""
        if self.world_size == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def gather(self, obj: object) -> list[object]:
        """Every rank's `obj`, in rank order."""
        if self.world_size == 1:
            return [obj]
        out: list[object] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def local(device_name: str, precision: str) -> Runtime:
    """A one-process runtime (evaluation, prediction, comparison), whatever the environment says."""
    device = pick_device(device_name)
    return Runtime(device, autocast_dtype(device, precision))


def setup(device_name: str, precision: str) -> Runtime:
    """The runtime of this process: one process, or one rank of a torchrun job (gloo on CPU, nccl on CUDA)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(device_name)
    # every batch has the same shape: let cuDNN time its convolution algorithms once and keep the fastest
    torch.backends.cudnn.benchmark = device.type == "cuda"
    if world_size == 1:
        return Runtime(device, autocast_dtype(device, precision))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise NinError(f"distributed training runs on cpu (gloo) or cuda (nccl), not {device.type}")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Runtime(device, autocast_dtype(device, precision), rank, world_size)


def teardown() -> None:
    """Leave the process group, if this process joined one. Exiting without it can abort a gloo rank
    at interpreter shutdown ("terminate called without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
