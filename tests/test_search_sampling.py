"""The search's sampling options (docs/method.md section 10): a uniform one-hot warm-up of
the shared weights and straight-through (hard) Gumbel samples."""
import json
from collections import Counter

import torch

from cli_helpers import SEARCH_FAST
from dnas.cli import search as search_cli
from dnas.models import Supernet
from dnas.space import load_space


def test_uniform_onehot_choice_is_one_hot_and_uniform():
    net = Supernet(load_space("tiny"), num_classes=5)
    gen = torch.Generator().manual_seed(0)
    counts = Counter()
    for _ in range(600):
        choice = net.uniform_onehot_choice(generator=gen)
        for axis, weights in choice.items():
            for unit, w in enumerate(weights):
                assert w.sum().item() == 1.0 and set(w.tolist()) <= {0.0, 1.0}
                counts[(axis, unit, int(w.argmax()))] += 1
    width = [counts[("width", 0, i)] for i in range(len(net.logits()["width"][0]))]
    assert min(width) > 600 / len(width) * 0.75, width  # every option drawn about equally often


def test_search_with_uniform_warmup_and_hard_gumbel(tmp_path, monkeypatch):
    from dnas.search.loop import Searcher

    drawn = []
    original = Searcher.sample_choice

    def spy(self, phase):
        choice = original(self, phase)
        drawn.append((self.epoch, phase, all(set(w.detach().tolist()) <= {0.0, 1.0}
                                              for ws in choice.values() for w in ws)))
        return choice

    monkeypatch.setattr(Searcher, "sample_choice", spy)
    out = tmp_path / "run"
    argv = SEARCH_FAST + ["--set", "epochs=2", "--set", "warmup_epochs=1", "--set", "warmup_paths=uniform",
                          "--set", "gumbel_hard=true", "--out", str(out)]
    assert search_cli.main(argv) == 0
    assert {(e, p) for e, p, _ in drawn} == {(0, "weights"), (1, "weights"), (1, "arch")}
    assert all(onehot for _, _, onehot in drawn)  # uniform one-hot, then straight-through one-hot
    assert json.loads((out / "summary.json").read_text())["found"]["argmax"]["params"] > 0
