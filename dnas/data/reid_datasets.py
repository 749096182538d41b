"""Person Re-ID data sets in their standard on-disk layouts (paper section 4.1).

Each loader reads a data root and returns a :class:`ReIDSplits`: three lists of
``(path, pid, camid)`` tuples (train / query / gallery), with camera ids starting at 0
and training pids relabelled to ``0..K-1``. Query and gallery keep their original pids,
which only need to agree with each other.

Layouts (``root`` may be the data set folder itself or a parent holding it under one of
its usual names):

- Market-1501: ``bounding_box_train/``, ``query/``, ``bounding_box_test/``; names like
  ``0002_c1s1_000451_03.jpg`` (pid, camera 1..6). Standard protocol: pid ``-1`` (junk)
  is dropped everywhere; pid ``0`` (distractor) is kept in the gallery only.
- DukeMTMC-reID: same folders, 8 cameras, names like ``0001_c2_f0046182.jpg``.
- CUHK03-NP (new protocol): ``detected/`` and ``labeled/`` variants, each in the
  Market folder layout (``.png`` files, 2 cameras).
- MSMT17 (V1 or V2): ``train/`` and ``test/`` (V2: ``mask_train_v2/``,
  ``mask_test_v2/``) with ``list_train.txt``, ``list_val.txt``, ``list_query.txt``,
  ``list_gallery.txt``; each line ``relative/path.jpg pid``; the camera is the third
  ``_``-separated field of the file name (1..15), e.g.
  ``0000/0000_000_01_0303morning_0015_0.jpg`` is camera 1 (camid 0). The layout read
  is recorded (``layout``: ``MSMT17_V1`` or ``MSMT17_V2``, whose faces are masked).

A missing folder, an empty split or a file name that does not parse raises
:class:`dnas.errors.DataError` naming the path and what was expected.
"""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from dnas.errors import DataError, brief

Item = tuple[str, int, int]  # (path, pid, camid)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_MARKET_STYLE = re.compile(r"^(-?\d+)_c(\d+)")


@dataclasses.dataclass
class ReIDSplits:
    """Train / query / gallery lists of one Re-ID data set.

    Attributes:
        name: data set name (``market1501``, ``dukemtmc``, ...).
        root: the folder the lists were read from.
        train: ``(path, pid, camid)``, pids relabelled to ``0..num_train_pids-1``.
        query: ``(path, pid, camid)`` with original pids.
        gallery: ``(path, pid, camid)`` with original pids.
        val_query: the validation query carved from the training identities
            (:func:`dnas.data.protocol.carve_validation`; empty without one).
        val_gallery: its gallery.
        note: how the training list was made (e.g. which MSMT17 lists), for the log.
        layout: which on-disk layout was read where a data set has several (MSMT17:
            ``MSMT17_V1`` with ``train/``, ``test/``; ``MSMT17_V2`` with
            ``mask_train_v2/``, ``mask_test_v2/``); empty otherwise.
        fingerprint: the counts against the published ones
            (:func:`dnas.data.fingerprint.fingerprint_splits`), set by
            :func:`dnas.data.loaders.load_splits`; ``None`` until then.
    """

    name: str
    root: str
    train: list[Item]
    query: list[Item]
    gallery: list[Item]
    val_query: list[Item] = dataclasses.field(default_factory=list)
    val_gallery: list[Item] = dataclasses.field(default_factory=list)
    note: str = ""
    layout: str = ""
    fingerprint: dict | None = None

    @property
    def num_train_pids(self) -> int:
        return len({pid for _, pid, _ in self.train})

    @property
    def num_train_cams(self) -> int:
        return len({cam for _, _, cam in self.train})

    def stats(self) -> dict[str, tuple[int, int, int]]:
        """``{subset: (#ids, #images, #cameras)}`` for train, query and gallery (and the
        validation query/gallery when there is one)."""
        out = {}
        subsets = ("train", "query", "gallery") + (("val_query", "val_gallery") if self.val_query else ())
        for subset in subsets:
            items = getattr(self, subset)
            out[subset] = (len({p for _, p, _ in items}), len(items), len({c for _, _, c in items}))
        return out

    def summary(self) -> str:
        """The statistics table (ids, images, cameras per subset), torchreid style."""
        rule = "  " + "-" * 46
        lines = [f"=> Loaded {self.name} from {self.root}" + (f" ({self.note})" if self.note else ""), rule,
                 "  subset      | # ids | # images | # cameras", rule]
        for subset, (n_ids, n_img, n_cam) in self.stats().items():
            lines.append(f"  {subset:<11} | {n_ids:5d} | {n_img:8d} | {n_cam:9d}")
        lines.append(rule)
        if self.val_query:
            lines.append("  val_query/val_gallery: training identities held out for model selection; "
                         "query/gallery: the test split")
        return "\n".join(lines)

    def summary_line(self) -> str:
        """The same statistics on one line (for logs)."""
        parts = [f"{s} {i} ids/{n} imgs/{c} cams" for s, (i, n, c) in self.stats().items()]
        return f"{self.name}: " + " | ".join(parts)


def relabel(items: list[Item]) -> list[Item]:
    """Map the pids of ``items`` to ``0..K-1`` in sorted order of the original pids."""
    mapping = {pid: i for i, pid in enumerate(sorted({pid for _, pid, _ in items}))}
    return [(path, mapping[pid], cam) for path, pid, cam in items]


def parse_market_style_name(path: str | Path, num_cams: int) -> tuple[int, int]:
    """Parse ``(pid, camid)`` from a Market/Duke/CUHK03-NP file name.

    Args:
        path: the image path; only its file name is parsed (``0002_c1s1_000451_03.jpg``).
        num_cams: cameras in the data set; the name's camera must be in ``1..num_cams``.

    Returns:
        ``(pid, camid)`` with ``camid`` starting at 0 (``c1`` is 0).

    Raises:
        DataError: the name does not start with ``<pid>_c<camera>`` or is out of range.
    """
    name = Path(path).name
    m = _MARKET_STYLE.match(name)
    if m is None:
        raise DataError(f"{path}: file name does not parse; expected '<pid>_c<camera>...' "
                        "such as 0002_c1s1_000451_03.jpg")
    pid, cam = int(m.group(1)), int(m.group(2))
    if pid < -1:
        raise DataError(f"{path}: person id {pid} is invalid; expected -1 (junk) or >= 0")
    if not 1 <= cam <= num_cams:
        raise DataError(f"{path}: camera c{cam} is out of range; expected c1..c{num_cams}")
    return pid, cam - 1


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found")
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))


def _read_market_folder(folder: Path, num_cams: int, keep_distractors: bool) -> list[Item]:
    items = []
    for path in _image_files(folder):
        pid, cam = parse_market_style_name(path, num_cams)
        if pid == -1 or (pid == 0 and not keep_distractors):
            continue  # junk images are never used; distractors only in the gallery
        items.append((str(path), pid, cam))
    if not items:
        raise DataError(f"{folder}: no usable images; expected files like "
                        "0002_c1s1_000451_03.jpg (pid > 0)")
    return items


def _resolve_root(root: str | os.PathLike, marker: str, candidates: tuple[str, ...],
                  what: str) -> Path:
    """Return ``root`` or ``root/<candidate>``, whichever holds ``marker``."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: {what} data root not found")
    for sub in ("",) + candidates:
        base = root / sub if sub else root
        if (base / marker).exists():
            return base
    tried = ", ".join(str(root / c / marker) for c in ("",) + candidates)
    raise DataError(f"{root}: not a {what} folder; expected {marker} in one of: {tried}")


def load_market_style(root: str | os.PathLike, name: str, num_cams: int) -> ReIDSplits:
    """Read a data set in the Market-1501 folder layout (no root resolution).

    Args:
        root: folder holding ``bounding_box_train``, ``query``, ``bounding_box_test``.
        name: the data set name recorded in the result.
        num_cams: cameras in the data set (camera numbers must be ``1..num_cams``).

    Returns:
        The three splits; training pids relabelled.
    """
    root = Path(root)
    for sub in ("bounding_box_train", "query", "bounding_box_test"):
        if not (root / sub).is_dir():
            raise DataError(f"{root / sub}: folder not found; a {name} root holds "
                            "bounding_box_train/, query/ and bounding_box_test/")
    train = relabel(_read_market_folder(root / "bounding_box_train", num_cams, False))
    query = _read_market_folder(root / "query", num_cams, False)
    gallery = _read_market_folder(root / "bounding_box_test", num_cams, True)
    return ReIDSplits(name, str(root), train, query, gallery)


_NAMING = {"market1501": (re.compile(r"^-?\d+_c\d+s\d+_\d+_\d+"), "Market-1501", "0002_c1s1_000451_03.jpg"),
           "dukemtmc": (re.compile(r"^-?\d+_c\d+_f\d+"), "DukeMTMC-reID", "0001_c2_f0046182.jpg")}


def _check_naming(base: Path, name: str) -> None:
    """Refuse a folder whose file names follow the other data set's pattern (Market vs Duke).

    Raises:
        DataError: most sampled training names match the other pattern and none this one's.
    """
    files = _image_files(base / "bounding_box_train")[:200]
    own, label, example = _NAMING[name]
    for other, (pattern, other_label, other_example) in _NAMING.items():
        if other == name:
            continue
        theirs = sum(bool(pattern.match(p.name)) for p in files)
        if files and theirs > len(files) // 2 and not any(own.match(p.name) for p in files):
            raise DataError(f"{base}: file names look like {other_label} ({files[0].name}), not {label} "
                            f"(expected e.g. {example}); use --data {other}:{base}")


def load_market1501(root: str | os.PathLike) -> ReIDSplits:
    """Market-1501 (6 cameras). ``root`` or ``root/Market-1501-v15.09.15`` etc."""
    base = _resolve_root(root, "bounding_box_train",
                         ("Market-1501-v15.09.15", "Market-1501", "market1501"), "Market-1501")
    _check_naming(base, "market1501")
    return load_market_style(base, "market1501", num_cams=6)


def load_dukemtmc(root: str | os.PathLike) -> ReIDSplits:
    """DukeMTMC-reID (8 cameras). ``root`` or ``root/DukeMTMC-reID``."""
    base = _resolve_root(root, "bounding_box_train",
                         ("DukeMTMC-reID", "dukemtmc-reid", "dukemtmcreid"), "DukeMTMC-reID")
    _check_naming(base, "dukemtmc")
    return load_market_style(base, "dukemtmc", num_cams=8)


def load_cuhk03(root: str | os.PathLike, variant: str = "detected") -> ReIDSplits:
    """CUHK03-NP (2 cameras), ``detected`` or ``labeled`` boxes.

    Args:
        root: folder holding ``detected/`` and ``labeled/`` (or a parent with
            ``cuhk03-np/``), or the variant folder itself.
        variant: ``detected`` or ``labeled``.
    """
    if variant not in ("detected", "labeled"):
        raise DataError(f"cuhk03 variant {variant!r} is unknown; expected 'detected' or 'labeled'")
    root_p = Path(root).expanduser()
    if root_p.name == variant and (root_p / "bounding_box_train").exists():
        base = root_p
    else:
        base = _resolve_root(root_p, f"{variant}/bounding_box_train",
                             ("cuhk03-np", "cuhk03_np", "CUHK03-NP"), f"CUHK03-NP ({variant})")
        base = base / variant
    return load_market_style(base, f"cuhk03-{variant}", num_cams=2)


MSMT17_DIRS = (("train", "test"), ("mask_train_v2", "mask_test_v2"))
MSMT17_LAYOUT_NAMES = ("MSMT17_V1", "MSMT17_V2")  # by MSMT17_DIRS: V2 has the faces masked


def parse_msmt17_camid(rel_path: str, where: str) -> int:
    """Camera (0-based) from an MSMT17 image name such as ``0000_000_01_0303morning_0015_0.jpg``.

    Raises:
        DataError: the third ``_``-separated field is not a camera number in 1..15.
    """
    fields = Path(rel_path).name.split("_")
    if len(fields) < 3 or not fields[2].isdigit() or not 1 <= int(fields[2]) <= 15:
        raise DataError(f"{where}: image name {rel_path!r} does not parse; expected "
                        "<pid>_<index>_<camera 01..15>_..., "
                        "e.g. 0000_000_01_0303morning_0015_0.jpg")
    return int(fields[2]) - 1


def _read_msmt17_list(list_path: Path, img_dir: Path, check_files: bool) -> list[Item]:
    if not list_path.is_file():
        raise DataError(f"{list_path}: list file not found")
    items = []
    with open(list_path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            where = f"{list_path}:{lineno}"
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise DataError(f"{where}: expected 'relative/path.jpg pid', got {brief(line.strip())}")
            rel, pid = parts[0], int(parts[1])
            cam = parse_msmt17_camid(rel, where)
            path = img_dir / rel
            if check_files and not path.is_file():
                raise DataError(f"{path}: image listed in {where} not found")
            items.append((str(path), pid, cam))
    if not items:
        raise DataError(f"{list_path}: empty split; expected lines 'relative/path.jpg pid'")
    return items


def load_msmt17(root: str | os.PathLike, use_val: bool = False,
                check_files: bool = True) -> ReIDSplits:
    """MSMT17 (V1 or V2 layout, 15 cameras).

    NOTE: by default the training set is ``list_train.txt`` only (30,248 images), as in
    torchreid and fast-reid, which keep ``list_val.txt`` out "to fairly compare with
    published methods on the conventional ReID setting" (their ``combineall`` adds it);
    ``use_val=True`` (recipe key ``msmt17_use_val``) adds the 2,373 validation images of
    the same identities (32,621 images, the published MSMT17 statistics, TransReID).

    Args:
        root: folder holding the list files (or a parent with ``MSMT17_V1/``,
            ``MSMT17_V2/``, ``MSMT17/`` or ``msmt17/``).
        use_val: add ``list_val.txt`` to the training set.
        check_files: check that every listed image exists.
    """
    base = _resolve_root(root, "list_train.txt",
                         ("MSMT17_V2", "MSMT17_V1", "MSMT17", "msmt17"), "MSMT17")
    for (train_name, test_name), layout in zip(MSMT17_DIRS, MSMT17_LAYOUT_NAMES):
        if (base / train_name).is_dir() and (base / test_name).is_dir():
            train_dir, test_dir = base / train_name, base / test_name
            break
    else:
        raise DataError(f"{base}: MSMT17 image folders not found; expected train/ and test/ "
                        "(V1) or mask_train_v2/ and mask_test_v2/ (V2)")
    train = _read_msmt17_list(base / "list_train.txt", train_dir, check_files)
    if use_val:
        train += _read_msmt17_list(base / "list_val.txt", train_dir, check_files)
    query = _read_msmt17_list(base / "list_query.txt", test_dir, check_files)
    gallery = _read_msmt17_list(base / "list_gallery.txt", test_dir, check_files)
    note = "training: list_train.txt + list_val.txt (msmt17_use_val=true)" if use_val else \
        "training: list_train.txt only (msmt17_use_val=false)"
    note = f"{layout} layout ({train_dir.name}/, {test_dir.name}/); {note}"
    return ReIDSplits("msmt17", str(base), relabel(train), query, gallery, note=note, layout=layout)
