"""What a dataset is (`Dataset`: uint8 images, labels, class names) and what a trained run knows of it (`Spec`)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import torch

from nin.data.preprocess import CROPS, Preprocess
from nin.errors import NinError

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


@dataclass(frozen=True)
class Dataset:
    """One split of a dataset: uint8 `images` (N, C, H, W), int64 `labels` (N,), and the `classes` they name."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def size(self) -> int:
        """The side length of the stored images."""
        return self.images.shape[-1]

    def __getitem__(self, index: slice | torch.Tensor) -> Dataset:
        return Dataset(self.images[index], self.labels[index], self.classes)

    def with_channels(self, channels: int) -> Dataset:
        """The images with `channels` channels: gray repeated into RGB, or RGB made gray as Pillow does (ITU-R
        601-2 luma), so that a split with other images than the training split's still fits the network."""
        x = self.images
        if x.shape[1] == channels:
            return self
        if channels == 3:
            return Dataset(x.expand(-1, 3, -1, -1).contiguous(), self.labels, self.classes)
        luma = torch.tensor([299, 587, 114], dtype=torch.int32).reshape(1, 3, 1, 1)
        gray = ((x.int() * luma).sum(dim=1, keepdim=True) + 500) // 1000
        return Dataset(gray.to(torch.uint8), self.labels, self.classes)


@dataclass(frozen=True)
class Spec:
    """What a trained run knows of its data without the data, saved in its checkpoint: the dataset's name,
    class names, channels, the side length of its stored images and how a file was cropped to it (`crop`: see
    nin/data/preprocess.py), and a folder dataset's path."""

    dataset: str = "fashion-mnist"
    classes: tuple[str, ...] = CLASS_NAMES
    channels: int = 1
    size: int = 28
    data_dir: str | None = None
    crop: str = "squash"

    @staticmethod
    def of(name: str, data: Dataset, data_dir: Path | None = None) -> Spec:
        """The spec of the training split `data` (a `Dataset`, or streamed `Files`: the same attributes)."""
        path = str(Path(data_dir).resolve()) if data_dir else None  # remembered: later commands need no --data-dir
        return Spec(name, data.classes, data.channels, data.size, path, getattr(data, "crop", "squash"))

    def preprocess(self, size: int) -> Preprocess:
        """How an image becomes the input of a network trained on this data at `size` x `size`."""
        return Preprocess(self.channels, self.size, size, self.crop)

    def check(self, data: Dataset, source: str) -> Dataset:
        """`data` in this spec's format, or one error if it is not the data this spec describes (`source`
        names it): another dataset behind the same folder changes the class names or their order."""
        if data.classes != self.classes:
            raise NinError(f"{source}: the data's classes ({', '.join(data.classes[:12])}"
                           f"{', ...' if len(data.classes) > 12 else ''}) are not the ones the run was trained on "
                           f"({', '.join(self.classes[:12])}{', ...' if len(self.classes) > 12 else ''}); point "
                           "--data-dir at the data the run was trained on")  # fmt: skip
        return data.with_channels(self.channels)

    @staticmethod
    def from_dict(values: dict | None, source: object = "the model description") -> Spec:
        """A checkpoint's `data` entry (`source` names the checkpoint in errors), or a model description
        (nin.inference.description: config.json, ONNX metadata); checkpoints from before datasets existed are
        Fashion-MNIST."""
        values = dict(values or {})
        if "id2label" in values:
            labels = values["id2label"]
            crop = values["preprocessing"]["crop"] if "preprocessing" in values else "squash"  # before: all squashed
            return Spec(values["dataset"], tuple(labels[str(i)] for i in range(len(labels))), values["in_channels"],
                        values["image_size"], values["data_dir"], crop)  # fmt: skip
        if unknown := sorted(set(values) - {f.name for f in fields(Spec)}):
            raise NinError(f"{source}: its data entry has {', '.join(map(repr, unknown))}, which this nin does not "
                           "know: it was written by a newer nin; upgrade nin to read it")  # fmt: skip
        spec = Spec(**{**values, "classes": tuple(values.get("classes", CLASS_NAMES))})
        if spec.crop not in CROPS:
            raise NinError(f"{source}: its data entry has crop {spec.crop!r}; nin knows {', '.join(CROPS)}")
        return spec

    def to_dict(self) -> dict:
        return {**self.__dict__, "classes": list(self.classes)}
