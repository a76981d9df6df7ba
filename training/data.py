"""Image-folder datasets: ``<root>/<class>/*`` or ``<root>/{train,val,test}/<class>/*``.

Files that can't be decoded are reported once and skipped, never fatal.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from models.preprocessing import ImageDecodeError, class_folder_images, load_image

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass
class ImageFolder:
    """A list of (path, label index) with the class names, sorted for reproducibility."""

    root: Path
    classes: list[str]
    samples: list[Sample]

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)


def class_list(text: str) -> list[str]:
    """Parse a comma-separated class list (``--classes apple,banana``)."""
    return [name.strip() for name in text.split(",") if name.strip()]


def has_splits(root: str | Path) -> bool:
    return (Path(root) / "train").is_dir()


def split_dir(root: str | Path, split: str) -> Path | None:
    """``root/split`` in the split layout; ``root`` itself (for train) in the flat layout."""
    root = Path(root)
    if has_splits(root):
        path = root / split
        return path if path.is_dir() else None
    return root if split == "train" else None


def scan_image_folder(
    roots: str | Path | Sequence[str | Path],
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    verify: bool = True,
) -> ImageFolder:
    """Collect images under one or more ``<root>/<class>/*`` trees (merged by class name).

    ``include``/``exclude`` filter class names; ``verify`` checks each file decodes
    (header and data) and skips the ones that don't, with a warning listing them.
    """
    roots = [Path(roots)] if isinstance(roots, str | Path) else [Path(r) for r in roots]
    by_class: dict[str, list[Path]] = {}
    for root in roots:
        if not root.is_dir():
            raise FileNotFoundError(f"dataset folder {root} does not exist")
        for name, files in class_folder_images(root).items():
            by_class.setdefault(name, []).extend(files)
    if include:
        missing = sorted(set(include) - set(by_class))
        if missing:
            raise ValueError(f"classes not found under {', '.join(map(str, roots))}: {missing}")
        by_class = {name: by_class[name] for name in include}
    for name in exclude or ():
        by_class.pop(name, None)
    classes = sorted(by_class)
    samples, bad = [], []
    for label, name in enumerate(classes):
        for path in by_class[name]:
            if verify and not _decodes(path):
                bad.append(path)
                continue
            samples.append(Sample(path, label))
    if bad:
        log.warning("skipped %d unreadable image(s): %s", len(bad), ", ".join(map(str, bad[:10])))
    if not samples:
        raise ValueError(f"no readable images under {', '.join(map(str, roots))}")
    return ImageFolder(roots[0], classes, samples)


def _decodes(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            image.verify()
        return True
    except Exception:  # any decoder failure means the same: skip the file
        return False


class ImageDataset(Dataset):
    """Decodes with the shared :func:`load_image`, then applies ``transform``."""

    def __init__(self, folder: ImageFolder, transform: Callable[[Image.Image], torch.Tensor]):
        self.samples = folder.samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[index]
        try:
            image = load_image(sample.path)
        except ImageDecodeError as exc:
            # verify() passed but decoding failed: a grey image keeps the batch shape intact.
            log.warning("could not decode %s: %s", sample.path, exc)
            image = Image.new("RGB", (256, 256), (128, 128, 128))
        return self.transform(image), sample.label
