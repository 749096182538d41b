"""Re-ID and ImageFolder readers on tiny data sets written in the real on-disk layouts."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dnas.data import (DATASET_NAMES, ClassificationDataConfig, ImageListDataset, ReIDDataConfig, build_loaders,
                       load_cuhk03, load_dukemtmc, load_imagefolder, load_market1501,
                       load_msmt17, load_splits, parse_data_spec)
from dnas.errors import DataError


def _img(path: Path, color=(120, 30, 200), size=(16, 32), fmt=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)


MARKET_FILES = {
    "bounding_box_train": ["0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg",
                           "0007_c3s1_000151_01.jpg", "0007_c1s1_000152_01.jpg",
                           "0010_c6s2_000100_02.jpg"],
    "query": ["0003_c1s1_000101_00.jpg", "0004_c2s1_000201_00.jpg"],
    "bounding_box_test": ["0003_c2s1_000102_01.jpg", "0003_c1s1_000103_01.jpg",
                          "0004_c3s1_000202_01.jpg", "0000_c1s1_000001_01.jpg",
                          "-1_c1s1_000002_01.jpg", "-1_c4s1_000003_01.jpg"],
}


def make_market(root: Path, files=MARKET_FILES, ext_fmt=None) -> Path:
    for sub, names in files.items():
        (root / sub).mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(names):
            _img(root / sub / name, (10 * i, 50, 90), fmt=ext_fmt)
    (root / "bounding_box_train" / "Thumbs.db").write_bytes(b"x")  # as in the real archive
    return root


def test_market_splits_protocol_and_relabel(tmp_path):
    make_market(tmp_path / "Market-1501-v15.09.15")
    sp = load_market1501(tmp_path)  # the parent: the usual folder name is found
    assert sp.name == "market1501"
    assert sorted({p for _, p, _ in sp.train}) == [0, 1, 2]  # 2, 7, 10 relabelled
    by_name = {Path(p).name: (pid, cam) for p, pid, cam in sp.train}
    assert by_name["0002_c1s1_000451_03.jpg"] == (0, 0)
    assert by_name["0010_c6s2_000100_02.jpg"] == (2, 5)
    assert len(sp.query) == 2 and {p for _, p, _ in sp.query} == {3, 4}
    gallery_pids = sorted(p for _, p, _ in sp.gallery)
    assert gallery_pids == [0, 3, 3, 4]  # junk (-1) dropped, distractor (0) kept
    assert sp.stats()["gallery"] == (3, 4, 3)
    table = sp.summary()
    assert "train" in table and "|     3 |        5 |         4" in table
    assert "\n" not in sp.summary_line() and "query 2 ids/2 imgs/2 cams" in sp.summary_line()


def test_market_errors_name_the_path(tmp_path):
    make_market(tmp_path)
    (tmp_path / "query" / "bad_name.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"bad_name\.jpg.*does not parse"):
        load_market1501(tmp_path)
    (tmp_path / "query" / "bad_name.jpg").unlink()
    _img(tmp_path / "query" / "0005_c7s1_000001_00.jpg")
    with pytest.raises(DataError, match=r"0005_c7s1_000001_00\.jpg.*c1\.\.c6"):
        load_market1501(tmp_path)
    (tmp_path / "query" / "0005_c7s1_000001_00.jpg").unlink()
    for f in (tmp_path / "query").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"query: no usable images"):
        load_market1501(tmp_path)
    (tmp_path / "query").rmdir()
    with pytest.raises(DataError, match=r"query: folder not found"):
        load_market1501(tmp_path)
    with pytest.raises(DataError, match="data root not found"):
        load_market1501(tmp_path / "nope")


def test_market_root_without_layout(tmp_path):
    (tmp_path / "something").mkdir()
    with pytest.raises(DataError, match=r"expected bounding_box_train in one of"):
        load_market1501(tmp_path)


def test_dukemtmc_eight_cameras(tmp_path):
    files = {"bounding_box_train": ["0001_c2_f0046182.jpg", "0001_c8_f0046999.jpg"],
             "query": ["0005_c1_f0000001.jpg"],
             "bounding_box_test": ["0005_c8_f0000002.jpg", "0006_c3_f0000003.jpg"]}
    make_market(tmp_path / "DukeMTMC-reID", files)
    sp = load_dukemtmc(tmp_path)
    assert sp.name == "dukemtmc"
    assert sorted(c for _, _, c in sp.train) == [1, 7]
    assert [p for _, p, _ in sp.train] == [0, 0]


def test_cuhk03_detected_and_labeled(tmp_path):
    base = tmp_path / "cuhk03-np"
    det = {"bounding_box_train": ["0001_c1_1.png", "0001_c2_2.png", "0002_c1_1.png"],
           "query": ["0010_c1_1.png"], "bounding_box_test": ["0010_c2_1.png"]}
    lab = {"bounding_box_train": ["0001_c1_1.png", "0003_c2_2.png"],
           "query": ["0010_c1_1.png"], "bounding_box_test": ["0010_c2_1.png", "0011_c2_1.png"]}
    make_market(base / "detected", det, "PNG")
    make_market(base / "labeled", lab, "PNG")
    d = load_cuhk03(tmp_path, "detected")
    lb = load_cuhk03(tmp_path, "labeled")
    assert (d.name, len(d.train), len(d.gallery)) == ("cuhk03-detected", 3, 1)
    assert (lb.name, len(lb.train), len(lb.gallery)) == ("cuhk03-labeled", 2, 2)
    assert load_cuhk03(base / "labeled", "labeled").train == lb.train  # variant folder itself
    assert load_splits(f"cuhk03-labeled:{tmp_path}").train == lb.train
    assert load_splits(f"cuhk03:{tmp_path}").train == d.train
    with pytest.raises(DataError, match="variant"):
        load_cuhk03(tmp_path, "both")
    _img(base / "detected" / "query" / "0011_c3_1.png", fmt="PNG")
    with pytest.raises(DataError, match=r"0011_c3_1\.png.*c1\.\.c2"):
        load_cuhk03(tmp_path, "detected")


def make_msmt17(root: Path, v2: bool = False) -> Path:
    train_dir, test_dir = ("mask_train_v2", "mask_test_v2") if v2 else ("train", "test")
    lists = {
        "list_train.txt": (train_dir, [("0000/0000_000_01_0303morning_0015_0.jpg", 0),
                                       ("0000/0000_001_05_0303morning_0016_0.jpg", 0),
                                       ("0003/0003_000_15_0303noon_0001_1.jpg", 3)]),
        "list_val.txt": (train_dir, [("0001/0001_000_02_0303morning_0020_0.jpg", 1)]),
        "list_query.txt": (test_dir, [("0000/0000_000_03_0303morning_0001_0.jpg", 0)]),
        "list_gallery.txt": (test_dir, [("0000/0000_001_04_0303morning_0002_0.jpg", 0),
                                        ("0001/0001_000_03_0303noon_0003_0.jpg", 1)]),
    }
    for name, (d, rows) in lists.items():
        for rel, _ in rows:
            _img(root / d / rel)
        (root / name).write_text("".join(f"{rel} {pid}\n" for rel, pid in rows) + "\n")
    return root


@pytest.mark.parametrize("v2", [False, True])
def test_msmt17_lists_and_cameras(tmp_path, v2):
    make_msmt17(tmp_path / ("MSMT17_V2" if v2 else "MSMT17_V1"), v2)
    sp = load_msmt17(tmp_path, use_val=True)
    assert sp.name == "msmt17" and "list_val" in sp.note
    cams = sorted(c for _, _, c in sp.train)
    assert cams == [0, 1, 4, 14]  # 01, 02 (val), 05, 15 -> 0-based
    assert sorted({p for _, p, _ in sp.train}) == [0, 1, 2]  # 0, 1, 3 relabelled
    assert [c for _, _, c in sp.query] == [2]
    assert [(p, c) for _, p, c in sp.gallery] == [(0, 3), (1, 2)]
    assert all(Path(p).is_file() for p, _, _ in sp.train + sp.query + sp.gallery)
    default = load_msmt17(tmp_path)  # list_train only, as torchreid and fast-reid
    assert len(default.train) == 3 and "list_train.txt only" in default.note
    assert len(load_msmt17(tmp_path, use_val=False).train) == 3


def test_msmt17_errors(tmp_path):
    root = make_msmt17(tmp_path)
    (root / "list_query.txt").write_text("0000/0000_000_03_0303morning_0001_0.jpg\n")
    with pytest.raises(DataError, match=r"list_query\.txt:1: expected 'relative/path\.jpg pid'"):
        load_msmt17(root)
    (root / "list_query.txt").write_text("0000/0000_000_xx_0303morning_0001_0.jpg 0\n")
    with pytest.raises(DataError, match=r"list_query\.txt:1: image name .* does not parse"):
        load_msmt17(root)
    (root / "list_query.txt").write_text("0000/0000_009_03_0303morning_0001_0.jpg 0\n")
    with pytest.raises(DataError, match=r"0000_009_03_0303morning_0001_0\.jpg: image listed in"):
        load_msmt17(root)
    (root / "list_query.txt").write_text("\n")
    with pytest.raises(DataError, match=r"list_query\.txt: empty split"):
        load_msmt17(root)
    (root / "list_query.txt").unlink()
    with pytest.raises(DataError, match=r"list_query\.txt: list file not found"):
        load_msmt17(root)
    (root / "test").rename(root / "elsewhere")
    with pytest.raises(DataError, match="MSMT17 image folders not found"):
        load_msmt17(root)


def make_imagefolder(root: Path) -> Path:
    for split, n in (("train", 3), ("val", 1)):
        for cls in ("n02", "n01"):
            for i in range(n):
                _img(root / split / cls / f"{cls}_{i}.JPEG", size=(12, 12))
    return root


def test_imagefolder_layout_and_errors(tmp_path):
    root = make_imagefolder(tmp_path / "imnet")
    sp = load_imagefolder(root)
    assert sp.classes == ["n01", "n02"] and sp.num_classes == 2
    assert len(sp.train) == 6 and len(sp.val) == 2
    assert {lab for p, lab, _ in sp.train if "n02" in Path(p).name} == {1}
    assert load_splits(f"imagenet:{root}").classes == ["n01", "n02"]
    _img(root / "val" / "n99" / "x.JPEG")
    with pytest.raises(DataError, match=r"n99: class 'n99' is not a training class"):
        load_imagefolder(root)
    (root / "val" / "n99" / "x.JPEG").unlink()
    (root / "val" / "n99").rmdir()
    for f in (root / "val" / "n01").iterdir():
        f.unlink()
    for f in (root / "val" / "n02").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"val: empty split"):
        load_imagefolder(root)
    with pytest.raises(DataError, match=r"train: folder not found"):
        load_imagefolder(tmp_path)


def test_parse_data_spec():
    assert parse_data_spec("market1501:/data/m").root == "/data/m"
    assert parse_data_spec("synthetic").root is None
    assert parse_data_spec("synthetic").task == "reid"
    assert parse_data_spec("synthetic-imagenet").task == "classification"
    assert parse_data_spec("MSMT17:/x").name == "msmt17"
    with pytest.raises(DataError) as exc:
        parse_data_spec("viper:/data")
    for name in DATASET_NAMES:
        assert name in str(exc.value)
    with pytest.raises(DataError, match="missing data root"):
        parse_data_spec("market1501")


def test_image_list_dataset(tmp_path):
    make_market(tmp_path)
    sp = load_market1501(tmp_path)
    ds = ImageListDataset(sp.train)
    img, pid, cam = ds[0]
    assert img.size == (16, 32) and (pid, cam) == (0, 0)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"broken\.jpg: cannot read image"):
        ImageListDataset([(str(tmp_path / "broken.jpg"), 0, 0)])[0]


def test_build_loaders_market_with_search_split(tmp_path):
    files = {"bounding_box_train": [f"{pid:04d}_c{1 + i % 3}s1_{pid * 10 + i:06d}_01.jpg"
                                    for pid in range(1, 7) for i in range(5)],
             "query": ["0100_c1s1_000001_00.jpg", "0101_c2s1_000002_00.jpg"],
             "bounding_box_test": ["0100_c2s1_000003_01.jpg", "0101_c1s1_000004_01.jpg",
                                   "0100_c1s1_000005_01.jpg"]}
    make_market(tmp_path, files)
    cfg = ReIDDataConfig(data=f"market1501:{tmp_path}", height=32, width=16, p=3, k=2,
                         workers=0, arch_fraction=0.2, test_batch_size=2)
    dl = build_loaders(cfg)
    assert dl.task == "reid" and dl.num_classes == 6
    x, y, c = next(iter(dl.train))
    assert x.shape == (6, 3, 32, 16) and x.dtype == torch.float32
    assert len(set(y.tolist())) == 3 and np.bincount(y.numpy()).max() == 2
    xa, ya, _ = next(iter(dl.arch))
    assert xa.shape == (6, 3, 32, 16)
    train_paths = {p for p, _, _ in dl.train.dataset.items}
    arch_paths = {p for p, _, _ in dl.arch.dataset.items}
    assert not train_paths & arch_paths and len(train_paths | arch_paths) == 30
    assert len(arch_paths) == 6  # one image of each of the 6 identities
    xq, qp, qc = next(iter(dl.query))
    assert xq.shape == (2, 3, 32, 16) and qp.tolist() == [100, 101] and qc.tolist() == [0, 1]
    assert sum(len(b[0]) for b in dl.gallery) == 3
    dl.set_epoch(3)
    assert dl.train_sampler.epoch == 3 and dl.arch_sampler.epoch == 3


def test_build_loaders_imagenet(tmp_path):
    root = make_imagefolder(tmp_path)
    dl = build_loaders(ClassificationDataConfig(data=f"imagenet:{root}", size=8, batch_size=4, workers=0))
    assert dl.task == "classification" and dl.num_classes == 2 and dl.query is None
    x, y, _ = next(iter(dl.train))
    assert x.shape == (4, 3, 8, 8)
    assert sum(len(b[0]) for b in dl.val) == 2


def test_loader_config_of_the_other_task_is_refused_before_reading(tmp_path):
    """A Re-ID config takes Re-ID specs only, a classification config ImageFolder ones:
    one clear error, raised before the (here missing) folder is read."""
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=r"imagenet:.*a classification data set, where reid data was expected"):
        build_loaders(ReIDDataConfig(data=f"imagenet:{missing}", workers=0))
    with pytest.raises(DataError, match=r"market1501:.*a reid data set, where classification data was expected"):
        build_loaders(ClassificationDataConfig(data=f"market1501:{missing}", workers=0))
    assert not missing.exists()


def test_a_registered_data_set_works_everywhere(tmp_path):
    """One register_dataset call: --data NAME:ROOT parses, loads, has its task, and
    dnas-retrain picks its default recipe; removing it makes the name unknown again."""
    from dnas.cli.retrain import default_recipe
    from dnas.data import load_splits
    from dnas.data.registry import DATASETS, dataset_names, register_dataset

    make_market(tmp_path)
    register_dataset("market-copy", "reid", lambda root, _: load_market1501(root), recipe="reid_market1501")
    try:
        assert "market-copy" in dataset_names("reid")
        spec = parse_data_spec(f"market-copy:{tmp_path}")
        assert spec.task == "reid"
        assert load_splits(spec).num_train_pids == load_market1501(tmp_path).num_train_pids
        assert default_recipe("reid", f"market-copy:{tmp_path}").name == "reid_market1501.yaml"
        assert default_recipe("imagenet", f"market-copy:{tmp_path}") is None  # another task: the defaults
    finally:
        DATASETS.pop("market-copy")
    with pytest.raises(DataError, match="unknown data set 'market-copy'"):
        parse_data_spec(f"market-copy:{tmp_path}")
    with pytest.raises(ValueError, match="task"):
        register_dataset("x", "detection", lambda root, _: None)


def test_direct_flags_are_type_checked_like_set(tmp_path):
    from dnas.config import load_config
    from dnas.errors import ConfigError
    from dnas.search.config import SearchConfig

    cfg = load_config(SearchConfig, None, ["epochs=3"], {"data": "market1501:/d", "seed": 4})
    assert (cfg.epochs, cfg.data, cfg.seed) == (3, "market1501:/d", 4)
    assert load_config(SearchConfig, None, ["seed=1"], {"seed": 2}).seed == 2  # the flag comes last
    with pytest.raises(ConfigError, match="'seed': expected an integer"):
        load_config(SearchConfig, None, [], {"seed": "four"})
    with pytest.raises(ConfigError, match="--no-such-key"):
        load_config(SearchConfig, None, [], {"no_such_key": 1})


def test_exponent_without_a_dot_is_a_number(tmp_path):
    """``--set a_lr=6e-3`` and ``a_lr: 6e-3`` in a recipe (a string to YAML 1.1) are numbers
    for a float key, and still not for an integer key."""
    from dnas.config import load_config
    from dnas.errors import ConfigError
    from dnas.search.config import SearchConfig

    recipe = tmp_path / "r.yaml"
    recipe.write_text("a_lr: 6e-3\nw_lr: 1E-2\n")
    cfg = load_config(SearchConfig, recipe, ["tau0=+5e0"])
    assert (cfg.a_lr, cfg.w_lr, cfg.tau0) == (0.006, 0.01, 5.0)
    with pytest.raises(ConfigError, match="'epochs': expected an integer"):
        load_config(SearchConfig, None, ["epochs=1e1"])
    with pytest.raises(ConfigError, match="expected a number"):
        load_config(SearchConfig, None, ["a_lr=6e-"])


def test_search_takes_the_augmentation_keys(monkeypatch):
    """flip_prob, pad and erasing_prob are keys of every Re-ID run: the search passes them
    to its loaders (it used the loader defaults whatever the recipe said)."""
    import dnas.data.loaders as loaders
    from dnas.config import load_config
    from dnas.runtime import Runtime
    from dnas.search.config import SearchConfig
    from dnas.search.run import build_search_data

    seen = {}

    def fake_build(dcfg):
        seen.update(flip=dcfg.flip_prob, pad=dcfg.pad, erasing=dcfg.erasing_prob)
        raise RuntimeError("stop")

    monkeypatch.setattr(loaders, "build_loaders", fake_build)
    cfg = load_config(SearchConfig, None, ["erasing_prob=0", "flip_prob=0.25", "pad=2"])
    with pytest.raises(RuntimeError, match="stop"):
        build_search_data(cfg, Runtime(torch.device("cpu")))
    assert seen == {"flip": 0.25, "pad": 2, "erasing": 0.0}
