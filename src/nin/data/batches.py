"""Batches on the device: stored uint8 images to inputs for a whole batch at once, augmentation, seeded order."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from nin.data.preprocess import to_inputs


def augment(x: torch.Tensor, kind: str) -> torch.Tensor:
    """A batch with each image flipped left-right with probability 1/2 (`flip`), shifted by up to 2 pixels
    each way with black filling in (`crop`, the padded random crop of CIFAR training; for digits, which a
    flip would change), both (`flip-crop`), and then also half of them with a random rectangle replaced by
    noise (`flip-crop-erase`: random erasing); `none` returns it as it is. Drawn on the batch's device from
    torch's global RNG, which checkpoints hold, so a resumed run draws the same."""
    if kind == "none":
        return x
    b, c, h, w = x.shape
    if "flip" in kind:
        x = torch.where(torch.rand(b, 1, 1, 1, device=x.device) < 0.5, x.flip(3), x)
    if "crop" in kind:
        pad = 2
        padded = F.pad(x, (pad, pad, pad, pad))
        dy, dx = torch.randint(0, 2 * pad + 1, (2, b, 1), device=x.device)
        rows, cols = torch.arange(h, device=x.device) + dy, torch.arange(w, device=x.device) + dx
        batch, channel = torch.arange(b, device=x.device), torch.arange(c, device=x.device)
        x = padded[batch[:, None, None, None], channel[None, :, None, None], rows[:, None, :, None],
                   cols[:, None, None, :]]  # fmt: skip
    if kind == "flip-crop-erase":
        x = random_erase(x)
    return x.contiguous(memory_format=torch.channels_last)


def random_erase(x: torch.Tensor, p: float = 0.5, area: tuple[float, float] = (0.02, 0.4),
                 ratio: tuple[float, float] = (0.3, 3.3)) -> torch.Tensor:  # fmt: skip
    """Random erasing (Zhong et al., 2017), batched: with probability `p` an image gets one rectangle
    of uniform noise, covering a random share `area` of it with aspect ratio (height / width) drawn
    log-uniformly from `ratio`. A rectangle that would not fit is clipped to the image (the paper
    draws again instead)."""
    b, _, h, w = x.shape
    u = torch.rand(5, b, device=x.device)
    share = area[0] + (area[1] - area[0]) * u[0]
    aspect = torch.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[1])
    eh = (share * h * w * aspect).sqrt().round().clamp(1, h)
    ew = (share * h * w / aspect).sqrt().round().clamp(1, w)
    top, left = (u[2] * (h - eh + 1)).floor(), (u[3] * (w - ew + 1)).floor()
    rows = torch.arange(h, device=x.device)[None, :, None]
    cols = torch.arange(w, device=x.device)[None, None, :]
    inside = ((rows >= top[:, None, None]) & (rows < (top + eh)[:, None, None])
              & (cols >= left[:, None, None]) & (cols < (left + ew)[:, None, None]))  # fmt: skip
    mask = (inside & (u[4] < p)[:, None, None]).unsqueeze(1)
    return torch.where(mask, torch.rand_like(x), x)


def shard(n: int, batch_size: int, epoch: int, start: int = 0, shuffle: bool = False, seed: int = 0, rank: int = 0,
          world_size: int = 1) -> Iterator[torch.Tensor]:  # fmt: skip
    """The indices (into `n` examples) of this rank's part of each batch of `epoch`, from batch `start` on.

    With `shuffle` the epoch's order is a permutation derived from (seed, epoch) alone; every rank draws the
    same global batch and takes its part (`rank` of `world_size` near-equal parts), as DistributedSampler does,
    so N ranks together train on exactly the batches of a single process."""
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    else:
        order = torch.arange(n)
    for i in range(start * batch_size, n, batch_size):
        yield order[i : i + batch_size].tensor_split(world_size)[rank]


class Batches:
    """Minibatches of (float images resized to `size`, labels) drawn from uint8 tensors.

    With `shuffle`, each epoch has its own permutation, derived from (seed, epoch) alone, so any
    epoch's order can be recreated, and a resumed run can skip the batches it already trained on.
    The last partial batch is kept, as in d2l's DataLoader. Under torchrun every rank takes its part of
    each global batch (see `shard`).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        size: int,
        device: torch.device,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.images, self.labels = images.to(device), labels.to(device)
        self.batch_size, self.size, self.device = batch_size, size, device
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, seed, rank, world_size

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def global_batch_len(self, step: int) -> int:
        """Examples in batch `step` over all ranks together."""
        return min(self.batch_size, len(self.labels) - step * self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch(0)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of `epoch`, from batch number `start` on."""
        for idx in shard(len(self.labels), self.batch_size, epoch, start, self.shuffle, self.seed, self.rank,
                         self.world_size):  # fmt: skip
            idx = idx.to(self.device)
            x = to_inputs(self.images[idx], self.size)  # the preprocessing's step 2 (nin/data/preprocess.py)
            # channels_last: oneDNN/cuDNN convolutions run in NHWC; 1.1-1.4x per step on a 2-core EPYC
            yield x.contiguous(memory_format=torch.channels_last), self.labels[idx]
