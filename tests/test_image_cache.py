"""The in-memory cache of resized images (dnas.data.image_cache): a cached image is
transformed to the same tensor as the file read afresh, under the same seed, and the
cache keeps to its budget."""
import numpy as np
import pytest
import torch
from PIL import Image

from dnas.data.image_cache import BUDGET_ENV, RESIZED, split_leading_resize
from dnas.data.loaders import ImageListDataset
from dnas.data.transforms import build_classification_transform, build_reid_transform


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    items = []
    for i in range(6):
        path = tmp_path / f"{i:04d}_c1s1_{i:06d}_00.jpg"
        Image.fromarray(rng.integers(0, 255, (128, 64, 3), dtype=np.uint8)).save(path, quality=90)
        items.append((str(path), i % 3, 0))
    RESIZED.clear()
    yield items
    RESIZED.clear()


def _epoch(ds, seed):
    torch.manual_seed(seed)
    return [ds[i][0] for i in range(len(ds))]


@pytest.mark.parametrize("transform", [
    build_reid_transform(64, 32, train=True, pad=4, erasing_prob=0.5),
    build_reid_transform(64, 32, train=False),
    build_classification_transform(32, train=False),
])
def test_cached_images_transform_to_the_same_tensors(images, monkeypatch, transform):
    monkeypatch.setenv(BUDGET_ENV, "0")
    fresh = [_epoch(ImageListDataset(images, transform), s) for s in (0, 1)]
    assert RESIZED.nbytes == 0
    monkeypatch.setenv(BUDGET_ENV, "64")
    ds = ImageListDataset(images, transform)
    for s, expected in zip((0, 1, 0), fresh + fresh[:1]):  # filling the cache, then from it
        assert all(torch.equal(a, b) for a, b in zip(_epoch(ds, s), expected))
    assert RESIZED.nbytes > 0


def test_cache_keeps_to_its_budget_and_a_transform_without_resize_is_not_cached(images, monkeypatch):
    one = 3 * 64 * 32
    monkeypatch.setenv(BUDGET_ENV, str(2.5 * one / 2**20))  # room for two images
    ds = ImageListDataset(images, build_reid_transform(64, 32, train=False))
    _epoch(ds, 0)
    assert RESIZED.nbytes == 2 * one
    monkeypatch.setenv(BUDGET_ENV, "64")
    resize, rest = split_leading_resize(build_classification_transform(32, train=True))
    assert resize is None and rest is not None  # a random crop comes first: nothing to keep
    RESIZED.clear()
    _epoch(ImageListDataset(images, build_classification_transform(32, train=True)), 0)
    assert RESIZED.nbytes == 0


def test_a_file_replaced_during_the_run_is_read_again(images, monkeypatch):
    import os

    monkeypatch.setenv(BUDGET_ENV, "64")
    ds = ImageListDataset(images[:1], build_reid_transform(64, 32, train=False))
    before = ds[0][0]
    path = images[0][0]
    Image.fromarray(np.zeros((128, 64, 3), dtype=np.uint8)).save(path, quality=90)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a coarse clock still sees the change
    after = ds[0][0]
    assert not torch.equal(before, after) and float(after.std(dim=(1, 2)).max()) < 0.05  # the black image


def test_a_malformed_budget_is_said_once_and_the_default_used(monkeypatch, caplog):
    from dnas.data.image_cache import DEFAULT_BUDGET_MB, budget_bytes

    for bad in ("lots", "-5"):
        monkeypatch.setenv(BUDGET_ENV, bad)
        with caplog.at_level("WARNING"):
            assert budget_bytes() == budget_bytes() == DEFAULT_BUDGET_MB * 2**20
        said = [r.getMessage() for r in caplog.records if BUDGET_ENV in r.getMessage()]
        assert len(said) == 1 and repr(bad) in said[0] and ">= 0" in said[0]
        caplog.clear()
    monkeypatch.setenv(BUDGET_ENV, "0")
    assert budget_bytes() == 0
