"""`SyncBatchNorm2d`: BatchNorm over a torchrun job's global batch, on any backend (gloo on CPUs too)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class _AllSum(torch.autograd.Function):
    """A tensor summed over all ranks; its gradient is the ranks' gradients summed the same way."""

    @staticmethod
    def forward(ctx: object, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the global batch of a torchrun job: each channel's mean and variance come from
    every rank's slice, so N ranks normalise exactly as one process normalises the whole batch.

    In training, two all-reduces per layer (the sums and counts, then the squared deviations from the
    global mean: two passes, as accurate as one process's variance); in one process the same two passes
    without them, so one process and N compute the same thing. In evaluation, plain BatchNorm with the
    running statistics. PyTorch's own `nn.SyncBatchNorm` runs on GPUs only; this one runs wherever the
    process group does (gloo on CPUs, nccl on GPUs). Same state_dict keys as nn.BatchNorm2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        total = _AllSum.apply if dist.is_initialized() and dist.get_world_size() > 1 else torch.clone
        c, dims, shape = x.shape[1], (0, 2, 3), (1, -1, 1, 1)
        x = x.float()  # statistics in fp32, as BatchNorm under autocast
        sums = total(torch.cat([x.sum(dims), torch.full((1,), x.numel() / c, device=x.device)]))
        n = sums[-1]
        mean = sums[:c] / n
        centred = x - mean.view(shape)
        var = total((centred * centred).sum(dims)) / n
        with torch.no_grad():  # the running statistics, as nn.BatchNorm2d keeps them (unbiased variance)
            self.num_batches_tracked += 1
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * n / (n - 1), self.momentum)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        return y * self.weight.view(shape) + self.bias.view(shape)


def sync_batch_norm(net: nn.Module) -> nn.Module:
    """`net` with every BatchNorm2d replaced by a SyncBatchNorm2d holding the same parameters and state."""
    for parent in net.modules():
        for name, child in parent.named_children():
            if type(child) is nn.BatchNorm2d:
                synced = SyncBatchNorm2d(child.num_features, child.eps, child.momentum).to(child.weight.device)
                synced.load_state_dict(child.state_dict())
                setattr(parent, name, synced)
    return net
