"""Where the shipped data files are: search spaces, recipes and latency tables.

The data live in four folders at the top of the source tree (``supernets/``, ``search/``,
``retrain/``, ``latency_tables/``). A built package (``pip install .``, a wheel) carries
them inside itself as ``dnas/_data/<folder>/`` (``setup.py`` maps them in at build time),
found here through :mod:`importlib.resources`; an editable install or a source tree on
``sys.path`` reads them from the checkout. ``$DNAS_HOME`` (a folder holding the four)
overrides both. Nothing here imports torch.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Callable

DATA_FOLDERS = ("supernets", "search", "retrain", "latency_tables", "backbones")  # backbones: DCS-FB arch files

#: the one table of short names: name -> the shipped file it stands for, a search space
#: (``supernets/``) or a DCS-FB fixed backbone (``backbones/``, one per Table I row)
SHORT_NAMES = {
    "tiny": "supernets/tiny.yaml",
    "fbnetv2": "supernets/fbnetv2.yaml",
    "large": "supernets/fbnetv2_large.yaml",
    "fbnetv2_large": "supernets/fbnetv2_large.yaml",
    "xlarge": "supernets/fbnetv2_xlarge.yaml",
    "fbnetv2_xlarge": "supernets/fbnetv2_xlarge.yaml",
    "mobilenetv2": "backbones/mobilenetv2.yaml",
    "mobilenetv2_200": "backbones/mobilenetv2_200.yaml",
    "resnet50": "backbones/resnet50.yaml",
    "hrnet_w32": "backbones/hrnet_w32.yaml",
    "osnet_x1_0": "backbones/osnet_x1_0.yaml",
    "transreid": "backbones/transreid.yaml",
}


def data_root() -> Path:
    """Folder holding ``supernets/``, ``search/``, ``retrain/`` and ``latency_tables/``."""
    env = os.environ.get("DNAS_HOME")
    if env:
        return Path(env)
    shipped = resources.files("dnas") / "_data"
    if isinstance(shipped, Path) and shipped.is_dir():  # a built install (wheels are unpacked)
        return shipped
    return Path(__file__).resolve().parents[1]  # an editable install or a source tree


def data_dir(folder: str) -> Path:
    """One of :data:`DATA_FOLDERS`."""
    if folder not in DATA_FOLDERS:
        raise ValueError(f"{folder}: not a data folder ({', '.join(DATA_FOLDERS)})")
    return data_root() / folder


def find_data_file(path: str | os.PathLike, folder: str | None = None, suffix: str = "",
                   exists: Callable[[Path], bool] = Path.is_file) -> Path:
    """Resolve a path a user gave, the working directory first.

    In order: ``path`` itself (absolute or relative to the working directory); a relative
    path starting with a data folder (``search/tiny_synthetic.yaml``, the form the recipes
    and docs use) under :func:`data_root`; a bare name (``tiny_synthetic``, with
    ``suffix`` added when it has none) in ``folder``.

    Returns:
        The first candidate for which ``exists`` holds, else ``path`` unchanged (so the
        caller's not-found message names what the user typed).
    """
    p = Path(path)
    candidates = [p]
    if not p.is_absolute() and p.parts:
        if p.parts[0] in DATA_FOLDERS and len(p.parts) > 1:
            candidates.append(data_root() / p)
        elif folder is not None and len(p.parts) == 1:
            candidates.append(data_dir(folder) / p)
            if suffix and not p.suffix:
                candidates.append(data_dir(folder) / (p.name + suffix))
    for c in candidates:
        if exists(c):
            return c
    return p


def short_names(folder: str) -> list[str]:
    """The short names of one data folder's files, in table order (``supernets``: the
    search spaces; ``backbones``: the DCS-FB archs)."""
    return [name for name, rel in SHORT_NAMES.items() if rel.startswith(folder + "/")]


def short_name_path(name: str, folder: str | None = None) -> Path | None:
    """The shipped file of a short name (only one of ``folder``'s when given), else ``None``."""
    rel = SHORT_NAMES.get(name)
    if rel is None or (folder is not None and not rel.startswith(folder + "/")):
        return None
    return data_root() / rel
