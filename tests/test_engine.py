"""The training engine (dnas/engine) on a toy model: phases and their optimizers, the
running means of the named parts (NaN for a phase that did not run), cameras reaching
the loss, the non-finite skip, the run loop's outputs numbered from 1, checkpoints that
name their kind, the one parameter-group rule and the LR schedules."""
from __future__ import annotations

import csv
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from dnas.engine import LRSchedule, Engine, Phase, StepResult, fit, load_checkpoint, param_groups
from dnas.engine.config import RunConfig
from dnas.engine.metrics import EpochSums, metric_column
from dnas.errors import CheckpointError, DnasError
from dnas.runtime import Runtime


class ListSampler:
    """Batches ``start..n`` of a fixed list (what the seeded samplers do by position)."""

    def __init__(self, n: int):
        self.n, self.start = n, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.start = start_batch

    def num_batches(self, epoch: int | None = None) -> int:
        return self.n

    def state_dict(self, batches_done: int | None = None) -> dict:
        return {"start_batch": batches_done or 0}


class ListLoader:
    def __init__(self, batches, sampler):
        self.batches, self.sampler = batches, sampler

    def __iter__(self):
        return iter(self.batches[self.sampler.start:])


class Toy(Engine):
    kind = "toy"

    def __init__(self, cfg, bad_after: int | None = None, warmup: int = 1):
        torch.manual_seed(0)
        super().__init__(cfg, Runtime(torch.device("cpu")), SimpleNamespace(num_classes=3),
                         nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)), progress=False)
        self.head = nn.Parameter(torch.zeros(3))
        self.add_optimizer("w", torch.optim.SGD(param_groups(self.net, 1e-4), lr=0.0),
                           LRSchedule(0.1, "cosine", epochs=cfg.epochs), "w_lr")
        self.add_optimizer("a", torch.optim.Adam([self.head], lr=0.0), LRSchedule(0.01), "a_lr")
        g = torch.Generator().manual_seed(1)
        batches = [(torch.randn(6, 4, generator=g), torch.tensor([0, 1, 2, 0, 1, 2]), torch.arange(6) % 2)
                   for _ in range(3)]
        for name, opt in (("weights", "w"), ("arch", "a")):
            sampler = ListSampler(3)
            self.add_phase(Phase(name, ListLoader(batches, sampler), sampler, [opt]))
        self.bad_after, self.warmup, self.cameras_seen, self.calls = bad_after, warmup, [], 0

    def epoch_phases(self, epoch: int) -> list[str]:
        return ["weights", "arch"] if epoch >= self.warmup else ["weights"]

    def forward_loss(self, images, labels, phase, cameras=None) -> StepResult:
        self.calls += 1
        self.cameras_seen.append(cameras)
        logits = self.net(images) + self.head
        loss = nn.functional.cross_entropy(logits, labels)
        if self.bad_after is not None and self.calls > self.bad_after:
            loss = loss * float("nan")
        return StepResult(loss, {"ce": loss, "half": loss / 2}, (logits.argmax(1) == labels).sum())


def cfg(**kw) -> RunConfig:
    return RunConfig(**{"epochs": 2, "device": "cpu", "amp": False, "channels_last": False, **kw})


def test_phases_means_and_cameras():
    t = Toy(cfg())
    t.run_epoch(lambda: None)  # epoch 1: the warm-up, weights only
    m = t.end_epoch()
    assert t.step == 3 and math.isnan(m["arch_loss"]) and math.isnan(m["arch_ce"]) and math.isnan(m["arch_acc"])
    assert m["weights_half"] == pytest.approx(m["weights_ce"] / 2) and 0 <= m["weights_acc"] <= 1
    assert set(m) >= {"w_lr", "a_lr", "skipped_steps"}
    assert all(torch.equal(c, torch.arange(6) % 2) for c in t.cameras_seen)  # batch[2] reaches the loss
    t.next_epoch()
    head = t.head.detach().clone()
    t.run_epoch(lambda: None)  # epoch 2: both phases; the arch phase moves only its parameter
    m = t.end_epoch()
    assert t.step == 9 and not math.isnan(m["arch_loss"]) and not torch.equal(head, t.head.detach())


def test_non_finite_losses_are_skipped_then_stop_the_run():
    t = Toy(cfg(max_bad_steps=2), bad_after=1)
    before = [p.detach().clone() for p in t.net.parameters()]
    with pytest.raises(DnasError, match="2 non-finite losses in a row at epoch 1"):
        t.run_epoch(lambda: None)
    assert t.sums.skipped == 2 and t.sums.count("weights") == 1
    t2 = Toy(cfg(max_bad_steps=5), bad_after=0)
    t2.run_epoch(lambda: None)
    assert all(torch.equal(a, b) for a, b in zip(before, t2.net.parameters()))  # no step was taken


def test_fit_numbers_epochs_from_one_and_checkpoints_name_their_kind(tmp_path, capsys):
    t = Toy(cfg(epochs=3))
    t.best_key = "weights_loss"  # a *loss key: the lowest is the best
    result = fit(t, tmp_path, ["weights_loss", "arch_loss"], "toy")
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3] and rows[0]["arch_loss"] == "nan"
    # the outcome is a value: the epochs as the file records them, the best epoch by the one rule
    assert [r["epoch"] for r in result.history] == [1, 2, 3] and result.last is result.history[-1]
    assert all(r[k] == float(row[k]) for r, row in zip(result.history, rows) for k in ("weights_loss", "w_lr"))
    losses = [r["weights_loss"] for r in result.history]
    assert result.selected_by == "weights_loss" and result.best_epoch == t.best_epoch is not None
    assert result.best["weights_loss"] == min(losses) and result.best["epoch"] == losses.index(min(losses)) + 1
    assert [ln.split(" |")[0] for ln in capsys.readouterr().out.splitlines()] == [f"epoch {i}/3" for i in (1, 2, 3)]
    state = load_checkpoint(tmp_path, "toy")
    assert state["epoch"] == 3 and state["kind"] == "toy"
    with pytest.raises(CheckpointError, match="a toy checkpoint, expected search"):
        load_checkpoint(tmp_path, "search")
    resumed = Toy(cfg(epochs=3))
    resumed.load_state_dict(state)
    assert resumed.epoch == 3 and resumed.resume_line(tmp_path).endswith("continuing at epoch 4/3, weights phase, "
                                                                           "batch 0")
    assert all(torch.equal(a, b) for a, b in zip(resumed.net.state_dict().values(), t.net.state_dict().values()))


def test_metric_columns_and_sums_of_old_checkpoints():
    """One rule names the columns; the flat sums of checkpoints written before (``weights_ce``,
    ``weights/steps``, ``skipped``) are read back per (phase, name), their order kept."""
    assert metric_column("train", "ce", ["train"]) == "ce"
    assert metric_column("arch", "ce", ["weights", "arch"]) == "arch_ce"
    old = {"weights_loss": 6.0, "weights_ce": 3.0, "weights/correct": 2.0, "weights/seen": 12.0,
           "weights/steps": 2.0, "arch_loss": 4.0, "arch/correct": 1.0, "arch/seen": 6.0, "arch/steps": 1.0,
           "skipped": 1.0}
    s = EpochSums.from_state(old, ["weights", "arch"])
    assert list(s.parts) == [("weights", "loss"), ("weights", "ce"), ("arch", "loss")] and s.skipped == 1.0
    assert s.means("weights") == {"loss": 3.0, "ce": 1.5} and s.count("arch", "seen") == 6.0
    assert EpochSums.from_state(s.state_dict(), ["weights", "arch"]).state_dict() == s.state_dict()
    one = EpochSums.from_state({"loss": 2.0, "train/steps": 2.0}, ["train"])
    assert one.means("train") == {"loss": 1.0}


def test_checkpoints_name_the_output_kinds_and_older_names_still_load(tmp_path):
    """One vocabulary for the kind of a run: a checkpoint names its directory's kind; the
    names older checkpoints used (or none, the first search checkpoints) read as those."""
    from dnas.engine import save_checkpoint
    from dnas.io import atomic_torch_save
    from dnas.outputs import REID_RUN, SEARCH_RUN

    save_checkpoint(tmp_path, {"model": {}}, REID_RUN)
    assert load_checkpoint(tmp_path, REID_RUN)["kind"] == REID_RUN
    for old, new in (("retrain-reid", REID_RUN), ("retrain-imagenet", "imagenet-run"), ("search", SEARCH_RUN),
                     (None, SEARCH_RUN)):
        atomic_torch_save({"version": 1, "model": {}, **({"kind": old} if old else {})}, tmp_path / "old.pt")
        assert load_checkpoint(tmp_path / "old.pt", new)["kind"] == new
        assert load_checkpoint(tmp_path / "old.pt", old or "search")["kind"] == new  # the old name asks for it too
    with pytest.raises(CheckpointError, match="a search-run checkpoint, expected reid-run"):
        load_checkpoint(tmp_path / "old.pt", REID_RUN)


def test_one_weight_decay_rule_and_the_schedules():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))
    decay, no_decay = param_groups(net, 5e-4)
    assert [p.dim() for p in decay["params"]] == [4, 2] and decay["weight_decay"] == 5e-4
    assert all(p.dim() == 1 for p in no_decay["params"]) and len(no_decay["params"]) == 4
    assert no_decay["weight_decay"] == 0.0
    warm = LRSchedule(1.0, "step", epochs=10, warmup_epochs=2, warmup_factor=0.1, milestones=(5,), gamma=0.1)
    assert [warm.at(e) for e in (0, 1, 2, 6)] == pytest.approx([0.1, 0.55, 1.0, 0.1])
    flat_then_cosine = LRSchedule(0.01, "cosine", epochs=10, warmup_epochs=2, warmup_factor=1.0)
    assert [flat_then_cosine.at(e) for e in (0, 2, 6, 10)] == pytest.approx([0.01, 0.01, 0.005, 0.0])
    with pytest.raises(ValueError, match="schedule 'linear'"):
        LRSchedule(1.0, "linear").at(0)
