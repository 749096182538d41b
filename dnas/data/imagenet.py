"""ImageNet (or any ImageFolder-layout set) for pretraining (paper section 4.2).

Layout: ``<root>/train/<class>/*.JPEG`` and ``<root>/val/<class>/*.JPEG`` (the val
set sorted into class folders, as torchvision's ``ImageFolder`` expects). Class indices
follow the sorted training class names; every validation class must be a training
class. Items are ``(path, label, camid)`` with ``camid = 0`` so that Re-ID and
classification sets share one dataset class.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from dnas.errors import DataError

CLASSIFICATION_EXTENSIONS = (".jpeg", ".jpg", ".png")

Item = tuple[str, int, int]  # (path, label, camid=0)


@dataclasses.dataclass
class ClassificationSplits:
    """Train / val lists of an image-classification set.

    Attributes:
        name: data set name.
        root: the data root.
        classes: class folder names; ``classes[label]`` names a label.
        train: ``(path, label, 0)`` items.
        val: ``(path, label, 0)`` items.
    """

    name: str
    root: str
    classes: list[str]
    train: list[Item]
    val: list[Item]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def summary_line(self) -> str:
        return (f"{self.name}: {self.num_classes} classes | train {len(self.train)} imgs | "
                f"val {len(self.val)} imgs")

    summary = summary_line


def _has_images(folder: Path) -> bool:
    return any(e.is_file() and Path(e.name).suffix.lower() in CLASSIFICATION_EXTENSIONS
               for e in os.scandir(folder))


def _scan_split(split_dir: Path, class_to_idx: dict[str, int] | None
                ) -> tuple[list[str], list[Item]]:
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: folder not found; expected "
                        f"<root>/{split_dir.name}/<class>/*.JPEG")
    folders = sorted(d.name for d in split_dir.iterdir()
                     if d.is_dir() and not d.name.startswith("."))
    # NOTE: a training class folder without images is refused, as torchvision's ImageFolder does:
    # counted as a class it would add a classifier output that never sees an example
    classes = [c for c in folders if class_to_idx is not None or _has_images(split_dir / c)]
    empty = [c for c in folders if c not in classes]
    if empty:
        raise DataError(f"{split_dir / empty[0]}: class folder without images (.JPEG/.jpg/.png)"
                        + (f", and {len(empty) - 1} more" if len(empty) > 1 else "")
                        + "; add its images or remove the folder")
    if not classes:
        raise DataError(f"{split_dir}: no class folders; expected {split_dir}/<class>/*.JPEG")
    if class_to_idx is None:
        class_to_idx = {c: i for i, c in enumerate(classes)}
    items: list[Item] = []
    for cls in classes:
        if cls not in class_to_idx:
            raise DataError(f"{split_dir / cls}: class {cls!r} is not a training class")
        for entry in sorted(os.scandir(split_dir / cls), key=lambda e: e.name):
            if entry.is_file() and Path(entry.name).suffix.lower() in CLASSIFICATION_EXTENSIONS:
                items.append((entry.path, class_to_idx[cls], 0))
    if not items:
        raise DataError(f"{split_dir}: empty split; no .JPEG/.jpg/.png images in its class folders")
    return classes, items


def load_imagefolder(root: str | os.PathLike, name: str = "imagenet") -> ClassificationSplits:
    """Read an ImageFolder-layout data set with ``train/`` and ``val/`` splits.

    Args:
        root: folder holding ``train/<class>/`` and ``val/<class>/``.
        name: data set name recorded in the result.

    Returns:
        The splits; labels index the sorted training class names.

    Raises:
        DataError: missing folders, no images, or a val class absent from train.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: {name} data root not found")
    classes, train = _scan_split(root / "train", None)
    _, val = _scan_split(root / "val", {c: i for i, c in enumerate(classes)})
    return ClassificationSplits(name, str(root), classes, train, val)
