"""Data-set fingerprints (dnas.data.fingerprint): counts per split against the published
ones, on generated folders in the real on-disk layouts.

Market-1501 is generated in full (36,036 hard links to one 1x1 JPEG: 12,936 train,
3,368 query, 19,732 bounding_box_test files with junk and distractors), once per session.
MSMT17 V1 and V2 get their full list files (126,441 lines each) beside empty image
folders (read without the file check). DukeMTMC-reID and CUHK03-NP are checked on
generated name lists of the published sizes, plus a small CUHK03-NP folder read by the
real reader. A run's ``summary.json`` carries the verdict (synthetic data).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from cli_helpers import runs  # noqa: F401 (fixture)
from dnas.data.fingerprint import PUBLISHED, fingerprint_splits, recorded_fingerprint
from dnas.data.loaders import load_splits
from dnas.data.reid_datasets import ReIDSplits, load_msmt17

MARKET_LINE = "market1501: matches Market-1501 (751 ids / 12,936 train images, 3,368 query, 15,913 gallery)"


def _link_all(folder: Path, names, source: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        os.link(source, folder / name)


def _one_pixel_jpeg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (1, 1), (90, 60, 30)).save(path, "JPEG")
    return path


def market_names() -> dict[str, list[str]]:
    """File names of Market-1501 at its published size: 751 train ids (odd pids), 750 test
    ids (even pids), 2,798 distractors (pid 0) and 3,819 junk images (pid -1) in the gallery."""
    train_pids, test_pids = range(1, 1502, 2), range(2, 1501, 2)

    def names(pids, count, offset=0):
        pids = list(pids)
        return [f"{pids[i % len(pids)]:04d}_c{i % 6 + 1}s1_{offset + i:06d}_01.jpg" for i in range(count)]

    gallery = (names(test_pids, 15913 - 2798, 100000) + names([0], 2798, 200000)
               + [f"-1_c{i % 6 + 1}s2_{i:06d}_00.jpg" for i in range(3819)])
    return {"bounding_box_train": names(train_pids, 12936), "query": names(test_pids, 3368, 300000),
            "bounding_box_test": gallery}


@pytest.fixture(scope="session")
def market_root(tmp_path_factory):
    """A full Market-1501 folder (1x1 JPEG hard links), made once per session."""
    base = tmp_path_factory.mktemp("fingerprint-market")
    source = _one_pixel_jpeg(base / "one.jpg")
    root = base / "Market-1501-v15.09.15"
    for folder, names in market_names().items():
        _link_all(root / folder, names, source)
    yield root
    shutil.rmtree(base, ignore_errors=True)


def test_market1501_full_layout_matches(market_root, caplog):
    with caplog.at_level(logging.INFO, logger="dnas.data.fingerprint"):
        splits = load_splits(f"market1501:{market_root.parent}")
    v = splits.fingerprint
    assert v["status"] == "matches" and v["line"] == MARKET_LINE and v["differences"] == {}
    assert v["counts"]["gallery"] == {"ids": 751, "images": 15913}  # junk dropped, distractor id 0 counted
    assert [r.levelname for r in caplog.records if r.getMessage() == MARKET_LINE] == ["INFO"]
    json.dumps(v)  # recorded as JSON


def test_market1501_with_missing_files_warns_per_split(market_root, caplog):
    train = sorted((market_root / "bounding_box_train").iterdir())
    gallery = sorted(p for p in (market_root / "bounding_box_test").iterdir() if not p.name.startswith("-1"))
    junk = sorted((market_root / "bounding_box_test").glob("-1_*"))
    removed = train[:6] + gallery[:3] + junk[:2]  # missing junk changes nothing: it is never used
    source = market_root.parent / "one.jpg"
    for p in removed:
        p.unlink()
    try:
        with caplog.at_level(logging.INFO, logger="dnas.data.fingerprint"):
            v = load_splits(f"market1501:{market_root}").fingerprint
    finally:
        for p in removed:
            os.link(source, p)
    assert v["status"] == "differs"
    assert v["line"] == ("market1501: differs from Market-1501: train 12,930 images (-6 of 12,936); "
                         "gallery 15,910 images (-3 of 15,913)")
    assert v["differences"] == {"train": {"ids": 0, "images": -6}, "gallery": {"ids": 0, "images": -3}}
    assert [r.levelname for r in caplog.records if r.getMessage() == v["line"]] == ["WARNING"]


def _splits_of_size(name: str, sizes: dict[str, tuple[int, int]], layout: str = "") -> ReIDSplits:
    """In-memory splits with ``sizes[split] == (ids, images)`` (ids dealt round-robin)."""
    def items(split, ids, count):
        return [(f"{split}/{i}.jpg", i % ids, 0) for i in range(count)]

    return ReIDSplits(name, "/nowhere", *(items(s, *sizes[s]) for s in ("train", "query", "gallery")),
                      layout=layout)


@pytest.mark.parametrize("name,line", [
    ("dukemtmc", "dukemtmc: matches DukeMTMC-reID (702 ids / 16,522 train images, 2,228 query, 17,661 gallery)"),
    ("cuhk03-labeled", "cuhk03-labeled: matches CUHK03-NP labeled (767 ids / 7,368 train images, 1,400 query, "
                       "5,328 gallery)"),
    ("cuhk03-detected", "cuhk03-detected: matches CUHK03-NP detected (767 ids / 7,365 train images, 1,400 query, "
                        "5,332 gallery)"),
])
def test_published_sizes_match(name, line):
    v = fingerprint_splits(_splits_of_size(name, PUBLISHED[name].counts))
    assert v["status"] == "matches" and v["line"] == line


def test_dukemtmc_missing_identity_names_ids_and_images():
    sizes = dict(PUBLISHED["dukemtmc"].counts, train=(701, 16499), query=(702, 2228))
    v = fingerprint_splits(_splits_of_size("dukemtmc", sizes))
    assert v["line"] == "dukemtmc: differs from DukeMTMC-reID: train 16,499 images (-23 of 16,522), 701 ids (-1 of 702)"
    assert v["differences"] == {"train": {"ids": -1, "images": -23}}


def test_cuhk03_labeled_given_the_detected_boxes_says_so():
    v = fingerprint_splits(_splits_of_size("cuhk03-labeled", PUBLISHED["cuhk03-detected"].counts))
    assert v["status"] == "differs" and v["also_matches"] == "CUHK03-NP detected"
    assert v["line"] == ("cuhk03-labeled: differs from CUHK03-NP labeled: train 7,365 images (-3 of 7,368); "
                         "gallery 5,332 images (+4 of 5,328); these are the counts of CUHK03-NP detected")


def test_cuhk03_small_folder_through_the_reader(tmp_path):
    source = _one_pixel_jpeg(tmp_path / "one.jpg")
    root = tmp_path / "cuhk03-np"
    for variant in ("labeled", "detected"):
        for folder, pids, per_id in (("bounding_box_train", range(1, 6), 4), ("query", range(10, 13), 2),
                                     ("bounding_box_test", range(10, 13), 3)):
            _link_all(root / variant / folder, [f"{p:04d}_c{k % 2 + 1}_{k}.png" for p in pids for k in range(per_id)],
                      source)
    v = load_splits(f"cuhk03-labeled:{tmp_path}").fingerprint
    assert v["reference"] == "CUHK03-NP labeled" and v["status"] == "differs"
    assert v["line"].startswith("cuhk03-labeled: differs from CUHK03-NP labeled: train 20 images (-7,348 of 7,368), "
                                "5 ids (-762 of 767); query 6 images (-1,394 of 1,400), 3 ids (-697 of 700); ")
    assert load_splits(f"cuhk03:{tmp_path}").fingerprint["reference"] == "CUHK03-NP detected"


def _msmt17_lines(count: int, ids: int, folder_ids_from: int = 0) -> str:
    return "".join(f"{p:04d}/{p:04d}_{i:03d}_{i % 15 + 1:02d}_0303morning_{i:04d}_0.jpg {p}\n"
                   for i in range(count) for p in [folder_ids_from + i % ids])


@pytest.fixture(scope="session")
def msmt17_roots(tmp_path_factory):
    """MSMT17 V1 and V2 layouts with list files of the published sizes (the image folders
    exist but stay empty: the lists are what is counted)."""
    base = tmp_path_factory.mktemp("fingerprint-msmt17")
    lists = {"list_train.txt": _msmt17_lines(30248, 1041), "list_val.txt": _msmt17_lines(2373, 1041),
             "list_query.txt": _msmt17_lines(11659, 3060), "list_gallery.txt": _msmt17_lines(82161, 3060)}
    roots = {}
    for version, folders in (("V1", ("train", "test")), ("V2", ("mask_train_v2", "mask_test_v2"))):
        root = base / f"MSMT17_{version}"
        for folder in folders:
            (root / folder).mkdir(parents=True)
        for name, text in lists.items():
            (root / name).write_text(text)
        roots[version] = root
    return roots


def test_msmt17_versions_and_list_val(msmt17_roots):
    v1 = fingerprint_splits(load_msmt17(msmt17_roots["V1"], check_files=False))
    assert v1["line"] == ("msmt17: matches MSMT17 V1 (train/, test/; list_train.txt only) "
                          "(1,041 ids / 30,248 train images, 11,659 query, 82,161 gallery)")
    assert v1["layout"] == "MSMT17_V1"
    with_val = load_msmt17(msmt17_roots["V2"].parent, use_val=True, check_files=False)  # a parent of MSMT17_V2/
    assert with_val.layout == "MSMT17_V2" and "MSMT17_V2 layout" in with_val.note
    train_list_only = dataclasses.replace(with_val, train=with_val.train[:30248])  # list_train.txt comes first
    assert fingerprint_splits(train_list_only)["line"] == (
        "msmt17: matches MSMT17 V2 (mask_train_v2/, mask_test_v2/: faces masked; list_train.txt only) "
        "(1,041 ids / 30,248 train images, 11,659 query, 82,161 gallery)")
    assert fingerprint_splits(with_val, msmt17_use_val=True)["line"] == (
        "msmt17: matches MSMT17 V2 (mask_train_v2/, mask_test_v2/: faces masked; list_train.txt + list_val.txt) "
        "(1,041 ids / 32,621 train images, 11,659 query, 82,161 gallery)")
    # a list_train.txt that already holds list_val.txt, read with msmt17_use_val=false
    merged = fingerprint_splits(with_val, msmt17_use_val=False)
    assert merged["status"] == "differs" and merged["line"] == (
        "msmt17: differs from MSMT17 V2 (mask_train_v2/, mask_test_v2/: faces masked; list_train.txt only): "
        "train 32,621 images (+2,373 of 30,248); these are the counts of MSMT17 V2 (mask_train_v2/, "
        "mask_test_v2/: faces masked; list_train.txt + list_val.txt)")


def test_msmt17_v2_with_images_through_load_splits(tmp_path):
    source = _one_pixel_jpeg(tmp_path / "one.jpg")
    root = tmp_path / "MSMT17_V2"
    for folder, list_name, count, ids in (("mask_train_v2", "list_train.txt", 6, 3),
                                          ("mask_test_v2", "list_query.txt", 4, 2),
                                          ("mask_test_v2", "list_gallery.txt", 8, 2)):
        text = _msmt17_lines(count, ids, 10 if list_name != "list_train.txt" else 0)
        (root / list_name).parent.mkdir(parents=True, exist_ok=True)
        with open(root / list_name, "a") as f:
            f.write(text)
        for line in text.splitlines():
            rel = Path(line.split()[0])
            (root / folder / rel.parent).mkdir(parents=True, exist_ok=True)
            if not (root / folder / rel).exists():
                os.link(source, root / folder / rel)
    v = load_splits(f"msmt17:{tmp_path}").fingerprint
    assert v["layout"] == "MSMT17_V2" and v["status"] == "differs"
    assert v["line"].startswith("msmt17: differs from MSMT17 V2 (mask_train_v2/, mask_test_v2/: faces masked; "
                                "list_train.txt only): train 6 images (-30,242 of 30,248), 3 ids (-1,038 of 1,041);")


def test_a_set_without_published_counts():
    other = fingerprint_splits(_splits_of_size("mine", {"train": (2, 4), "query": (1, 1), "gallery": (1, 2)}))
    assert other["status"] == "unpublished"
    assert other["line"] == "mine: no published counts to compare with (2 ids / 4 train images, 1 query, 2 gallery)"


@pytest.mark.slow
def test_runs_record_and_print_the_verdict(runs, capsys):  # noqa: F811 (fixture)
    from dnas.cli import retrain as retrain_cli
    from dnas.cli import visualize as visualize_cli

    search_summary = json.loads((runs["search"] / "summary.json").read_text())
    reid_summary = json.loads((runs["reid"] / "final" / "summary.json").read_text())
    line = search_summary["data_fingerprint"]["line"]
    assert line.startswith("synthetic: generated set, no published counts (") and " ids / " in line
    assert search_summary["data_fingerprint"]["status"] == "generated"
    assert reid_summary["data_fingerprint"]["line"] == line
    for run in (runs["search"], runs["reid"]):
        beside_config = json.loads((run / "data_fingerprint.json").read_text())
        assert beside_config["data"] == "synthetic" and beside_config["data_fingerprint"]["line"] == line
        assert recorded_fingerprint(run)["line"] == line
    capsys.readouterr()
    assert retrain_cli.main(["reid", "--eval-only", str(runs["reid"]), "--set", "eval_max_queries=10"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert line in out and json.loads(out[-1])["data_fingerprint"]["line"] == line
    figures = runs["reid"].parent / "curves"
    assert visualize_cli.main(["curves", str(runs["reid"]), "--out", str(figures)]) == 0
    assert line in capsys.readouterr().out.splitlines()
    assert json.loads((figures / "curves.json").read_text())["data_fingerprint"]["line"] == line
