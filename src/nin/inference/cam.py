"""Class activation maps: NiN's free, exact explanation of each prediction.

NiN's last mlpconv block outputs one spatial map per class, and global average pooling turns each map
into that class's score. So the maps *are* the evidence: a class's logit is the mean of its map, and
where the map is high is where the network found that class. (The CAM method of Zhou et al., 2016,
rebuilds such maps from a network's last features and its linear head; NiN outputs them directly.)
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from nin.config import Config
from nin.data.preprocess import Images, to_inputs
from nin.data.subsets import few, pick, test_set
from nin.data.types import Spec
from nin.errors import NinError
from nin.models.nin import MAX_RESIZE, NiN, feature_sizes
from nin.plots import plot_cams

MAX_IMAGES = 64  # rows of one readable PNG


def class_maps(net: NiN, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, classes, h, w) maps, the exact tensor that global average pooling averages, and the logits."""
    maps = net[:-2](x)  # every layer before AdaptiveAvgPool2d and Flatten
    return maps, maps.mean(dim=(2, 3))


def cam(
    net: NiN,
    config: Config,
    spec: Spec,
    checkpoint: Path,
    out: Path,
    images: Images | None = None,
    test_samples: int = 0,
    data_dir: Path | None = None,
) -> list[dict]:
    """Class maps of `net` (trained with `config` on `spec`'s data, from `checkpoint`) for `images` (files, or
    stored uint8 images: see `Preprocess.stored_images`), or for `test_samples` test images drawn from every
    class (`nin.data.subsets.pick`; their true class is known), drawn as heat maps over the input for the
    predicted and the true class into the PNG grid `out`; returns each image's prediction."""
    if (images is None) == (not test_samples):
        raise NinError("give either image files or --test-samples N, not both and not neither")
    if test_samples < 0:
        raise NinError(f"--test-samples {test_samples}: give a number of test images, 1 to {MAX_IMAGES}")
    check_maps(net, checkpoint, config.resize)
    if images is not None:
        (x, names), labels = spec.preprocess(config.resize).stored_images(images), None
    else:
        held_out = test_set(config, spec, data_dir)
        data = few(held_out, test_samples)
        x, labels = data.images, data.labels
        names = [f"test image {i}" for i in pick(held_out.labels, test_samples).tolist()]  # their place in the split
    if len(x) > MAX_IMAGES:
        raise NinError(f"at most {MAX_IMAGES} images fit one CAM grid; ask for fewer")
    return draw_cams(net, config.resize, spec.classes, x, labels, names, out)


def check_maps(net: NiN, checkpoint: Path, size: int) -> None:
    """Refuse runs whose class maps are 1x1: a single value per class cannot show where."""
    if feature_sizes(net, size)[-1] < 2:
        smallest = next(r for r in range(size, MAX_RESIZE) if feature_sizes(net, r)[-1] >= 2)
        raise NinError(
            f"{checkpoint}: trained at {size}x{size}, where NiN's class maps are 1x1, so they cannot show "
            f"where the evidence is; use a run trained at resize {smallest} or more (2x2 maps; the d2l "
            "preset's 224 gives 5x5)"
        )


def draw_cams(net: NiN, size: int, classes: tuple[str, ...], images: torch.Tensor, labels: torch.Tensor | None,
              names: list[str], out: Path) -> list[dict]:  # fmt: skip
    """Draw the grid of uint8 `images` (N, C, H, W) of `classes` to `out`; returns each image's prediction."""
    x = to_inputs(images, size)
    with torch.inference_mode():
        maps, logits = class_maps(net, x)
    probs = logits.softmax(dim=1)
    heat = F.interpolate(maps, size=x.shape[-2:], mode="bilinear", align_corners=False)
    plot_cams(x, heat, probs, labels, names, classes, out)
    rows = []
    for i, name in enumerate(names):
        p = int(probs[i].argmax())
        rows.append({"image": name, "predicted": classes[p], "prob": probs[i, p].item()})
        if labels is not None:
            rows[-1].update(true=classes[labels[i]], true_prob=probs[i, labels[i]].item())
    return rows
