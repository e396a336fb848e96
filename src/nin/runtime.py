"""Where training runs: the device, and the process group when started by torchrun.

`torchrun --nproc_per_node=N -m nin train ...` sets RANK, LOCAL_RANK and WORLD_SIZE; every rank then
runs the same program on its shard of each batch, and DistributedDataParallel averages gradients.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from nin.errors import NinError

# How long a rank waits in a collective for the others: past it, a rank whose peer hung (or died
# without closing its connection) stops with an error instead of waiting forever. Long enough for
# rank 0's checkpoint and plot writes and an uneven evaluation; NIN_COLLECTIVE_TIMEOUT (seconds) sets it.
COLLECTIVE_TIMEOUT = 600


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

    @contextmanager
    def peers_answer(self) -> Iterator[None]:
        """Within the block, a collective that fails (another rank died, or stopped answering for the
        collective timeout) ends this rank too, with one clear error instead of a traceback."""
        try:
            yield
        except RuntimeError as e:
            if self.world_size == 1 or not any(w in str(e) for w in ("gloo", "nccl", "NCCL", "Timed out")):
                raise
            first = str(e).strip().splitlines()[0][:200]
            raise NinError(f"rank {self.rank}: a collective with the other processes failed ({first}): another "
                           f"rank died or stopped answering for {collective_timeout():g} s "
                           "(NIN_COLLECTIVE_TIMEOUT); this rank stops too") from None  # fmt: skip

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


def env_world_size() -> int:
    """How many processes train together: torchrun's WORLD_SIZE, else 1."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device_name: str, precision: str) -> Runtime:
    """The runtime of this process: one process, or one rank of a torchrun job (gloo on CPU, nccl on CUDA)."""
    world_size = env_world_size()
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
        timeout = datetime.timedelta(seconds=collective_timeout())
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=_store(rank, world_size, timeout), rank=rank, world_size=world_size,
                                timeout=timeout)  # fmt: skip
    return Runtime(device, autocast_dtype(device, precision), rank, world_size)


def _store(rank: int, world_size: int, timeout: datetime.timedelta) -> dist.Store:
    """torchrun's rendezvous store, its keys prefixed by the restart count. Workers that torchrun's
    elastic agent restarts (--max-restarts) meet in the same store as the attempt before; without the
    prefix, gloo reads the dead workers' addresses there and fails ("connectFullMesh failed ...
    Connection refused")."""
    agent_hosts = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                          is_master=not agent_hosts and rank == 0, timeout=timeout)  # fmt: skip
    return dist.PrefixStore(f"nin/attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def collective_timeout() -> float:
    value = os.environ.get("NIN_COLLECTIVE_TIMEOUT", str(COLLECTIVE_TIMEOUT))
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise NinError(f"NIN_COLLECTIVE_TIMEOUT={value!r}: give a number of seconds, e.g. {COLLECTIVE_TIMEOUT}")
    return seconds


def is_main_process() -> bool:
    """Rank 0 of a torchrun job, or a process of its own: the one that prints and writes."""
    return os.environ.get("RANK", "0") == "0"


def teardown(wait: bool = True) -> bool:
    """Leave the process group, if this process joined one, with `wait` once every rank is here (rank 0 may
    host the store the others still talk to); returns whether it left one. Without `wait` (this rank failed:
    a peer may be dead or hung) it leaves at once."""
    if not (dist.is_available() and dist.is_initialized()):
        return False
    if wait:
        try:
            dist.barrier()
        except Exception:  # noqa: BLE001 - a peer that died meanwhile: leave anyway
            pass
    dist.destroy_process_group()
    return True


def cpu_info() -> dict:
    """The CPU model and the features that decide its speed here: AVX2 (fp32), VNNI (int8), AVX-512 BF16 and AMX
    (bf16)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:  # not Linux
        pass
    return {
        "cpu": model,
        "cpu_count": os.cpu_count(),
        "avx2": "avx2" in flags,
        "vnni": bool({"avx512_vnni", "avx_vnni"} & flags),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx": "amx_bf16" in flags,
    }
