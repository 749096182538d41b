"""Shared test set-up: CPU only, small thread count, GPU tests skipped without CUDA."""
import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Synthetic data sets go to a per-session temp cache, never the user's home."""
    monkeypatch.setenv("DNAS_CACHE", str(tmp_path_factory.getbasetemp() / "dnas-cache"))
