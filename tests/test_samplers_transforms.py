"""PK / random batch samplers (determinism, resume, DDP), the 80/20 split, transforms, mixup."""
from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from dnas.data import (MixupBatch, PKSampler, RandomBatchSampler, build_classification_transform,
                       build_reid_transform, mixup_batch, split_weight_arch)
from dnas.errors import DataError

# 6 identities: 8, 5, 4, 3 (fewer than K=4), 1, 4 images
LABELS = [0] * 8 + [1] * 5 + [2] * 4 + [3] * 3 + [4] + [5] * 4


def test_pk_batches_have_p_identities_of_k_images():
    s = PKSampler(LABELS, p=3, k=4, seed=0)
    batches = list(s)
    assert len(batches) == len(s) == s.num_batches() > 0
    for b in batches:
        assert len(b) == 12
        ids = Counter(LABELS[i] for i in b)
        assert len(ids) == 3 and set(ids.values()) == {4}
    # identities with fewer than K images are drawn with replacement
    used = Counter(LABELS[i] for b in batches for i in b)
    assert used[4] in (0, 4) and used[3] in (0, 4)
    for epoch in range(5):
        s.set_epoch(epoch)
        for b in s:
            for lab in (3, 4):
                idx = [i for i in b if LABELS[i] == lab]
                assert not idx or len(idx) == 4


def test_pk_deterministic_per_seed_and_epoch():
    a, b = PKSampler(LABELS, 2, 2, seed=7), PKSampler(LABELS, 2, 2, seed=7)
    assert list(a) == list(b)
    a.set_epoch(1)
    e1 = list(a)
    a.set_epoch(0)
    assert list(a) != e1
    assert list(PKSampler(LABELS, 2, 2, seed=8)) != list(b)
    b.set_epoch(1)
    assert list(b) == e1


def test_pk_resume_mid_epoch_with_state_dict():
    full = PKSampler(LABELS, 2, 2, seed=3)
    full.set_epoch(4)
    batches = list(full)
    state = full.state_dict(batches_done=3)
    assert state == {"seed": 3, "epoch": 4, "start_batch": 3}
    buf = io.BytesIO()
    torch.save({"sampler": state}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)["sampler"]
    resumed = PKSampler(LABELS, 2, 2, seed=3)
    resumed.load_state_dict(loaded)
    assert list(resumed) == batches[3:] and len(resumed) == len(batches) - 3
    assert resumed.num_batches() == len(batches)
    resumed.set_epoch(5)
    assert resumed.start_batch == 0
    with pytest.raises(DataError, match="seed"):
        PKSampler(LABELS, 2, 2, seed=4).load_state_dict(loaded)


def test_pk_ddp_ranks_split_batches():
    whole = PKSampler(LABELS, 2, 2, seed=1)
    ranks = [PKSampler(LABELS, 2, 2, seed=1, rank=r, world_size=2) for r in range(2)]
    n = len(whole) // 2
    assert [len(r) for r in ranks] == [n, n]
    assert list(ranks[0]) == list(whole)[0:2 * n:2]
    assert list(ranks[1]) == list(whole)[1:2 * n:2]


def test_pk_errors():
    with pytest.raises(DataError, match="fewer than p=7"):
        PKSampler(LABELS, p=7, k=2)
    with pytest.raises(ValueError):
        PKSampler(LABELS, p=0, k=2)


def test_random_batch_sampler():
    s = RandomBatchSampler(10, 4, seed=0, drop_last=False)
    batches = list(s)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(i for b in batches for i in b) == list(range(10))
    assert len(RandomBatchSampler(10, 4, drop_last=True)) == 2
    s.set_epoch(1, start_batch=1)
    e1 = RandomBatchSampler(10, 4, seed=0, drop_last=False).batches(1)
    assert list(s) == e1[1:] and e1 != batches


def test_split_by_image_stratified():
    labels = np.repeat(np.arange(5), [10, 5, 2, 1, 3])
    w, a = split_weight_arch(labels, 0.2, seed=0)
    assert len(np.intersect1d(w, a)) == 0
    assert np.array_equal(np.sort(np.concatenate([w, a])), np.arange(len(labels)))
    arch_counts = np.bincount(labels[a], minlength=5)
    weight_counts = np.bincount(labels[w], minlength=5)
    # at least 1, at most n - 1 per id; one round(t * n) for all ids, the total closest to 20% (4.2 of 21)
    assert arch_counts.tolist() == [1, 1, 1, 0, 1]
    assert weight_counts.tolist() == [9, 4, 1, 1, 2]
    assert set(labels[a]) == {0, 1, 2, 4}  # every identity with >= 2 images in both subsets
    w2, a2 = split_weight_arch(labels, 0.2, seed=0)
    assert np.array_equal(a, a2) and np.array_equal(w, w2)
    _, a3 = split_weight_arch(labels, 0.2, seed=1)
    assert not np.array_equal(a, a3)
    with pytest.raises(ValueError):
        split_weight_arch(labels, 1.0)


def _pil(h=40, w=20):
    x = np.zeros((h, w, 3), dtype=np.uint8)
    x[:, : w // 2] = 255  # left half white: a flip is visible
    return Image.fromarray(x)


def test_reid_transforms_shapes_and_normalisation():
    test_tf = build_reid_transform(32, 16, train=False)
    y = test_tf(_pil())
    assert y.shape == (3, 32, 16) and y.dtype == torch.float32
    white = (1.0 - 0.485) / 0.229
    assert torch.allclose(y[0, :, 0], torch.full((32,), white), atol=1e-4)
    assert torch.equal(test_tf(_pil()), y)
    torch.manual_seed(0)
    flip_only = build_reid_transform(32, 16, train=True, flip_prob=1.0, pad=0, erasing_prob=0)
    assert torch.allclose(flip_only(_pil()), y.flip(2))
    erase = build_reid_transform(32, 16, train=True, flip_prob=0, pad=0, erasing_prob=1.0)
    assert (erase(_pil()) == 0).any() and not (y == 0).any()
    crops = {build_reid_transform(32, 16, train=True, flip_prob=0, erasing_prob=0)(_pil())
             .sum().item() for _ in range(20)}
    assert len(crops) > 1  # pad + random crop shifts the image


def test_classification_transform():
    tr = build_classification_transform(24, train=True)
    te = build_classification_transform(24, train=False)
    assert tr(_pil(50, 60)).shape == (3, 24, 24) and te(_pil(50, 60)).shape == (3, 24, 24)


def test_mixup_soft_targets():
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 2, 2).clone()
    y = torch.tensor([0, 1, 2, 1])
    m = mixup_batch(x, y, 3, alpha=0.4, rng=np.random.default_rng(0))
    assert isinstance(m, MixupBatch) and 0.0 <= m.lam <= 1.0
    assert torch.allclose(m.targets.sum(1), torch.ones(4))
    assert torch.allclose(m.images, m.lam * x + (1 - m.lam) * x[m.perm])
    onehot = torch.nn.functional.one_hot(y, 3).float()
    assert torch.allclose(m.targets, m.lam * onehot + (1 - m.lam) * onehot[m.perm])
    m2 = mixup_batch(x, y, 3, alpha=0.4, rng=np.random.default_rng(0))
    assert m2.lam == m.lam and torch.equal(m2.perm, m.perm)
    none = mixup_batch(x, y, 3, alpha=0.0)
    assert none.lam == 1.0 and torch.equal(none.images, x) and torch.equal(none.targets, onehot)
