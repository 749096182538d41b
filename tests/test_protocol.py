"""Model selection and protocol (issue 12): the validation split carved from the training
identities, checkpoint-best chosen on it and the test split evaluated after the last
epoch (search and retrain), the MSMT17 list_val key, the weight/architecture split that
keeps K images and two cameras per identity, and junk / skipped queries in evaluation."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dnas.data.loaders import ReIDDataConfig, build_loaders, load_splits
from dnas.data.protocol import carve_validation, format_split_statistics, split_statistics
from dnas.data.samplers import split_weight_arch
from dnas.errors import DataError
from dnas.reid.metrics import evaluate, evaluate_features

ROOT = Path(__file__).resolve().parents[1]


def _items(counts_per_cam):
    """``[(path, pid, cam)]`` from ``{pid: [images in cam 0, images in cam 1, ...]}``."""
    out = []
    for pid, per_cam in counts_per_cam.items():
        for cam, n in enumerate(per_cam):
            out += [(f"{pid}_{cam}_{i}.jpg", pid, cam) for i in range(n)]
    return out


def market_like(seed=0, n_ids=751, mean_total=17.2):
    """Labels and cameras shaped like Market-1501's training set (751 ids, ~13k images,
    6 cameras, 2-6 cameras per id, images spread unevenly over the cameras)."""
    rng = np.random.default_rng(seed)
    labels, cams = [], []
    for pid in range(n_ids):
        c = rng.choice([2, 3, 4, 5, 6], p=[.25, .25, .2, .15, .15])
        chosen = rng.choice(6, size=c, replace=False)
        total = max(c, int(round(rng.lognormal(0, 0.6) * mean_total * 0.85)))
        per = rng.multinomial(total - c, rng.dirichlet(np.ones(c) * 0.7)) + 1
        for cam, m in zip(chosen, per):
            labels += [pid] * int(m)
            cams += [int(cam)] * int(m)
    return np.asarray(labels), np.asarray(cams)


def _old_split(labels, fraction=0.2, seed=0):
    """The split before issue 12: round(fraction * n) random images per id, clamped to 1..n-1."""
    rng = np.random.default_rng([seed, 80_20])
    arch = []
    for lab in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == lab))
        n = len(idx)
        arch.append(idx[:0 if n < 2 else min(max(int(round(fraction * n)), 1), n - 1)])
    a = np.sort(np.concatenate(arch))
    return np.setdiff1d(np.arange(len(labels)), a), a


# -- validation split ------------------------------------------------------------------
def test_carve_validation_query_gallery_by_identity():
    rng = np.random.default_rng(0)
    train = _items({pid: list(rng.integers(1, 5, size=4)) for pid in range(100)})
    rest, val = carve_validation(train, 0.05, min_ids=3, seed=0, keep_ids=16)
    assert val.num_ids == 5 and val.num_train_ids == 100  # 5% of 100 > the minimum of 3
    held = {p for _, p, _ in val.query + val.gallery}
    assert len(held) == 5
    assert sorted({p for _, p, _ in rest}) == list(range(95))  # labels re-indexed
    assert len(rest) + len(val.query) + len(val.gallery) == len(train)
    kept_paths = {path for path, _, _ in rest}
    assert not kept_paths & {path for path, _, _ in val.query + val.gallery}  # held-out ids do not train
    for pid in held:
        q = [c for _, p, c in val.query if p == pid]
        g = [c for _, p, c in val.gallery if p == pid]
        assert len(q) == len(set(q)) >= 1  # at most one query per camera
        assert all(set(g) - {c} for c in q)  # every query has a match in another camera
    rest2, val2 = carve_validation(train, 0.05, min_ids=3, seed=0, keep_ids=16)
    assert rest2 == rest and val2.query == val.query  # seeded
    _, val3 = carve_validation(train, 0.05, min_ids=3, seed=1, keep_ids=16)
    assert {p for _, p, _ in val3.query} != {p for _, p, _ in val.query}
    assert carve_validation(train, 0.0)[1] is None and carve_validation(train, 0.0)[0] == train


def test_carve_validation_minimum_and_errors():
    train = _items({pid: [1, 1] for pid in range(20)})  # one image in each of two cameras
    rest, val = carve_validation(train, 0.01, min_ids=4, seed=0, keep_ids=2)
    assert val.num_ids == 4 and len(val.query) == 4 and len(val.gallery) == 4  # one query moved to the gallery
    with pytest.raises(DataError, match="fewer than p=18"):
        carve_validation(train, 0.01, min_ids=4, keep_ids=18)
    one_cam = _items({pid: [5] for pid in range(20)})
    with pytest.raises(DataError, match="seen by two cameras"):
        carve_validation(one_cam, 0.1, min_ids=2)
    with pytest.raises(DataError, match="val_ids_fraction"):
        carve_validation(train, 1.0)


def test_build_loaders_with_validation_split():
    dcfg = ReIDDataConfig(data="synthetic", height=32, width=16, p=4, k=4, workers=0, arch_fraction=0.2,
                          val_ids_fraction=0.05, val_min_ids=8, val_seed=0)
    data = build_loaders(dcfg)
    assert data.num_classes == 52 and data.validation.num_ids == 8  # the synthetic set has 60 training ids
    assert data.val_query is not None and len(data.val_query.dataset) == len(data.validation.query)
    assert set(data.train.dataset.labels) | set(data.arch.dataset.labels) == set(range(52))
    held = {p for p, _, _ in data.validation.query + data.validation.gallery}
    assert not held & {p for p, _, _ in data.splits.train}
    summary = data.splits.summary()
    assert "val_query" in summary and "test split" in summary
    assert "ids < K=4" in data.arch_split_summary and set(data.arch_split_stats) == {"weights", "arch"}
    plain = build_loaders(ReIDDataConfig(data="synthetic", height=32, width=16, p=4, k=4, workers=0))
    assert plain.num_classes == 60 and plain.validation is None and plain.val_query is None


# -- MSMT17 list_val ---------------------------------------------------------------------
def test_msmt17_use_val_is_an_explicit_key(tmp_path):
    from test_data_reid import make_msmt17

    from dnas.retrain.config import ReIDConfig
    from dnas.search.config import SearchConfig

    root = make_msmt17(tmp_path / "MSMT17_V1")
    default = load_splits(f"msmt17:{root}")
    merged = load_splits(f"msmt17:{root}", msmt17_use_val=True)
    assert len(default.train) == 3 and len(merged.train) == 4
    assert "list_train.txt only" in default.summary() and "list_val" in merged.summary()
    assert SearchConfig().msmt17_use_val is False and ReIDConfig().msmt17_use_val is False
    for recipe in ("search/large_msmt17.yaml", "search/xlarge_msmt17.yaml", "retrain/reid_msmt17.yaml"):
        assert "msmt17_use_val: false" in (ROOT / recipe).read_text(), recipe


# -- weight / architecture split -------------------------------------------------------------
def test_arch_split_keeps_k_images_and_two_cameras_on_market_like_data():
    labels, cams = market_like()
    k = 4
    w, a = split_weight_arch(labels, 0.2, seed=0, camids=cams, k=k)
    assert len(np.intersect1d(w, a)) == 0 and len(w) + len(a) == len(labels)
    assert 0.18 <= len(a) / len(labels) <= 0.25  # still about 80/20
    n = np.bincount(labels)
    na, nw = np.bincount(labels[a], minlength=len(n)), np.bincount(labels[w], minlength=len(n))
    assert np.all(na[n >= 2] >= 1) and np.all(nw >= 1)  # stratified: every id in both parts
    big = n >= 2 * k
    assert np.all(na[big] >= k) and np.all(nw[big] >= k)  # K images in both parts where the id has 2K
    new = split_statistics(labels[a], cams[a], k)
    old_w, old_a = _old_split(labels)
    old = split_statistics(labels[old_a], cams[old_a], k)
    assert new["ids_fewer_than_k"] <= (n < 2 * k).sum() < old["ids_fewer_than_k"] / 3
    assert new["ids_one_camera"] <= 5 < old["ids_one_camera"] / 10
    for i in np.unique(labels):  # two cameras in the arch part wherever the id has two and 2+ arch images
        if na[i] >= 2 and len(np.unique(cams[labels == i])) >= 2:
            assert len(np.unique(cams[a][labels[a] == i])) >= 2, i
    w2, a2 = split_weight_arch(labels, 0.2, seed=0, camids=cams, k=k)
    assert np.array_equal(a, a2) and not np.array_equal(a, split_weight_arch(labels, 0.2, 1, cams, k)[1])


def test_arch_split_floors_yield_to_the_fraction_on_small_ids():
    # CUHK03-like: ~7 images per id in 2 cameras; K=4 in the arch part would take ~50% of the images
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(300), 2 * np.repeat(rng.integers(2, 6, size=300), 1))
    cams = np.concatenate([np.repeat([0, 1], n // 2) for n in np.bincount(labels)])
    w, a = split_weight_arch(labels, 0.2, seed=0, camids=cams, k=4)
    assert len(a) / len(labels) <= 0.25
    na = np.bincount(labels[a])
    assert na.min() >= 1 and np.all(np.bincount(labels[w]) >= 2)


def test_split_statistics_table():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    cams = np.array([0, 1, 1, 0, 0, 0, 1, 2, 3, 3])
    s = split_statistics(labels, cams, 4)
    assert s == {"ids": 3, "images": 10, "images_per_id_min": 2, "images_per_id_mean": pytest.approx(10 / 3),
                 "ids_fewer_than_k": 2, "ids_one_camera": 1}
    text = format_split_statistics({"weights": s, "arch": split_statistics(labels[:3], cams[:3], 4)}, 4, "t")
    assert "ids < K=4" in text and "ids 1 camera" in text and "weights" in text and "arch" in text


# -- evaluation: junk labels and skipped queries ----------------------------------------------
def test_evaluate_drops_junk_labels_like_the_loaders():
    rng = np.random.default_rng(0)
    q_pids, g_pids = np.array([1, 2, -1, 3]), np.array([1, -1, 2, 3, 1, -1, 2])
    q_cams, g_cams = np.array([0, 0, 1, 0]), np.array([1, 0, 1, 1, 0, 1, 0])
    d = rng.random((4, 7)).astype(np.float32)
    r = evaluate(d, q_pids, g_pids, q_cams, g_cams, max_rank=3)
    qk, gk = q_pids != -1, g_pids != -1
    ref = evaluate(d[qk][:, gk], q_pids[qk], g_pids[gk], q_cams[qk], g_cams[gk], max_rank=3)
    assert r["mAP"] == pytest.approx(ref["mAP"]) and np.allclose(r["cmc"], ref["cmc"])
    assert (r["num_junk_query"], r["num_junk_gallery"], r["num_queries"]) == (1, 2, 3)
    assert ref["num_junk_query"] == ref["num_junk_gallery"] == 0
    qf, gf = torch.randn(4, 8), torch.randn(7, 8)
    rf = evaluate_features(qf, gf, q_pids, g_pids, q_cams, g_cams, max_rank=3)
    ref_f = evaluate_features(qf[torch.as_tensor(qk)], gf[torch.as_tensor(gk)], q_pids[qk], g_pids[gk],
                              q_cams[qk], g_cams[gk], max_rank=3)
    assert rf["mAP"] == pytest.approx(ref_f["mAP"]) and rf["num_junk_gallery"] == 2
    with pytest.raises(DataError, match="pid -3"):
        evaluate(d, np.array([1, 2, -3, 3]), g_pids, q_cams, g_cams)
    with pytest.raises(DataError, match="no query image left"):
        evaluate(d, np.full(4, -1), g_pids, q_cams, g_cams)


def test_evaluate_reid_reports_skipped_queries():
    from torch.utils.data import DataLoader, TensorDataset

    from dnas.evaluation import evaluate_reid, prefixed

    class Embed(torch.nn.Module):
        def forward(self, x, return_features=True):
            return {"embedding": x.flatten(1)}

    x = torch.randn(6, 1, 2, 2)
    query = DataLoader(TensorDataset(x[:3], torch.tensor([1, 2, 9]), torch.tensor([0, 0, 0])), batch_size=2)
    gallery = DataLoader(TensorDataset(x[3:], torch.tensor([1, 2, 2]), torch.tensor([1, 1, 0])), batch_size=2)
    m = evaluate_reid(Embed(), query, gallery, torch.device("cpu"))
    assert (m["num_queries"], m["num_valid"], m["num_skipped"]) == (3, 2, 1)  # pid 9 has no match
    assert set(prefixed(m, "val")) == {f"val_{k}" for k in m}


# -- search and retrain: selection on validation, test at the end -------------------------------
def test_search_selects_on_validation_and_tests_on_request(tmp_path):
    from dnas.cli import search as search_cli

    out = tmp_path / "s"
    argv = ["--recipe", str(ROOT / "search/tiny_synthetic.yaml"), "--set", "epochs=3", "--set", "max_steps_per_epoch=2",
            "--set", "eval_max_queries=20", "--set", "warmup_epochs=0", "--set", "eval_test_every_epoch=true",
            "--set", "p=8", "--no-progress", "--out", str(out)]
    assert search_cli.main(argv) == 0
    import csv

    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert all(r["test_mAP"] != "" and r["val_mAP"] != "" for r in rows)  # test curves on request
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]  # epochs are numbered from 1
    best = max(rows, key=lambda r: (float(r["val_mAP"]), -int(r["epoch"])))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["checkpoint_best"]["epoch"] == int(best["epoch"])
    ckpt = torch.load(out / "checkpoint-best.pt", weights_only=True)
    assert ckpt["epoch"] == int(best["epoch"])  # epochs done when it was saved
    assert ckpt["best_epoch"] == int(best["epoch"])
    assert ckpt["best_metric"] == pytest.approx(float(best["val_mAP"]), abs=1e-5)


def test_retrain_selects_on_validation_and_without_one_on_loss(tmp_path):
    import csv

    from dnas.cli import derive as derive_cli
    from dnas.cli import retrain as retrain_cli

    arch = tmp_path / "arch"
    assert derive_cli.main(["--supernet", "tiny", "--sample", "min", "--no-onnx", "--out", str(arch)]) == 0
    base = ["reid", "--arch", str(arch), "--data", "synthetic", "--set", "epochs=3", "--set", "max_steps_per_epoch=2",
            "--set", "warmup_epochs=0", "--set", "eval_every=1", "--set", "eval_max_queries=20", "--set", "p=8",
            "--set", "export_onnx=false", "--no-progress"]
    out = tmp_path / "r"
    assert retrain_cli.main(base + ["--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert all(r["val_mAP"] != "" for r in rows) and [r["test_mAP"] != "" for r in rows] == [False, False, True]
    best_epoch = int(max(rows, key=lambda r: (float(r["val_mAP"]), -int(r["epoch"])))["epoch"])
    summary = json.loads((out / "final/summary.json").read_text())
    assert summary["checkpoint_best"]["epoch"] == best_epoch and summary["checkpoint_best"]["selected_by"] == "val_mAP"
    assert summary["validation"]["num_ids"] == 30 and summary["num_classes"] == 60  # reid_synthetic: 90 ids, a third held out
    assert summary["mAP"] == pytest.approx(float(rows[-1]["test_mAP"]), abs=1e-5)
    assert 0 <= summary["checkpoint_best"]["test"]["mAP"] <= 1
    assert torch.load(out / "checkpoint-best.pt", weights_only=True)["best_epoch"] == best_epoch
    out0 = tmp_path / "r0"
    assert retrain_cli.main(base + ["--set", "val_ids_fraction=0", "--out", str(out0)]) == 0
    rows0 = list(csv.DictReader(open(out0 / "metrics.csv")))
    assert "val_mAP" not in rows0[0] and rows0[-1]["test_mAP"] != ""
    summary0 = json.loads((out0 / "final/summary.json").read_text())
    assert summary0["checkpoint_best"]["selected_by"] == "loss" and summary0["num_classes"] == 90
    lowest = int(min(rows0, key=lambda r: (float(r["loss"]), int(r["epoch"])))["epoch"])
    assert summary0["checkpoint_best"]["epoch"] == lowest


def test_runs_from_before_the_validation_split_resume_on_their_own_data(tmp_path):
    import yaml

    from dnas.data.protocol import legacy_protocol_changes
    from dnas.retrain.config import ReIDConfig
    from dnas.search.config import SearchConfig

    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump({"data": "msmt17:/data/msmt17", "epochs": 3}))
    assert legacy_protocol_changes(old, SearchConfig()) == {"val_ids_fraction": 0.0, "msmt17_use_val": True}
    new = tmp_path / "new.yaml"
    new.write_text(yaml.safe_dump({"data": "msmt17:/x", "val_ids_fraction": 0.05, "msmt17_use_val": False}))
    assert legacy_protocol_changes(new, ReIDConfig()) == {}
    assert legacy_protocol_changes(tmp_path / "missing.yaml", ReIDConfig()) == {}
