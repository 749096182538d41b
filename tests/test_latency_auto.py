"""``latency_table: auto`` (dnas.latency.auto): a shipped table for this device and space,
a table profiled on first use (cached, resumable), or the MACs proxy with a warning;
``none`` only when asked; the run records the cost it used and a resume keeps it."""
import json
import logging
import types
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from dnas.cli import search as search_cli
from dnas.latency import auto
from dnas.latency.keys import space_entries
from dnas.latency.proxy import PROXY_MACS_PER_MS, entry_macs, macs_table
from dnas.latency.timing import TimingConfig
from dnas.models.supernet import ArchChoice
from dnas.resources import data_root
from dnas.space import SearchSpace, load_space
from dnas.search.config import SearchConfig

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_TINY = (data_root() / "latency_tables" / "cpu_tiny_b8_fp32.csv").resolve()
FAST = ["--set", "epochs=1", "--set", "max_steps_per_epoch=1", "--set", "eval_max_queries=5",
        "--set", "val_ids_fraction=0", "--no-progress"]


def _resolve(space, spec="auto", **kw):
    return auto.resolve_latency_cost(spec, space, "cpu", supernet=kw.pop("supernet", space.name),
                                     batch=kw.pop("batch", 32), progress=False, **kw)


def _small_space(tmp_path) -> Path:
    """``tiny`` at 32x16: a small space no shipped table covers (another structure hash)."""
    text = (ROOT / "supernets" / "tiny.yaml").read_text()
    text = text.replace("input_size: [3, 64, 32]", "input_size: [3, 32, 16]").replace("name: tiny", "name: tiny32")
    path = tmp_path / "tiny32.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def fast_profile(monkeypatch, tmp_path):
    """Cache in tmp_path and a very short timing protocol (1 pass, 1 window of 0.2 ms)."""
    monkeypatch.setenv("DNAS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(auto, "AUTO_PASSES", 1)
    monkeypatch.setattr(auto, "auto_timing", lambda device, batch, dtype, cl: TimingConfig(
        device=str(device), dtype=dtype, batch=batch, channels_last=cl, warmup=1, windows=1, window_ms=0.2))
    return tmp_path / "cache"


def _rt():
    return types.SimpleNamespace(distributed=False, is_main=True, device=torch.device("cpu"))


def test_auto_picks_the_shipped_cpu_tiny_table():
    cost = _resolve(load_space("tiny"))
    assert cost.source == f"table:{SHIPPED_TINY}"
    assert "shipped" in cost.note and "batch 8" in cost.note and "calibrated" in cost.note
    lo, hi = cost.model.bounds_ms()
    assert 0 < lo < hi


def test_auto_without_a_table_on_cpu_falls_back_to_the_macs_proxy(caplog):
    from dnas.search.run import _resolve_cost

    cfg = SearchConfig(supernet="fbnetv2", device="cpu")
    with caplog.at_level(logging.WARNING, logger="dnas.search.run"):
        cost = _resolve_cost(cfg, _rt(), progress=False)
    assert cost.source == "proxy:macs"
    lines = [r.getMessage() for r in caplog.records if "latency cost" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0]
    line = lines[0]
    assert line.startswith("latency cost: proxy:macs: no latency table for fbnetv2")
    assert "MACs of the ops" in line and "not time measured" in line  # how the objective differs
    want = auto.cache_table_path(cfg.load_space(), auto.auto_timing("cpu", 32, "fp32", False))
    assert f"'dnas-latency profile --supernet fbnetv2 --device cpu --batch 32 --dtype fp32 --out {want}'" in line
    assert "about" in line and "latency_profile_budget_s=300" in line  # why it did not profile

    space = cfg.load_space()
    model = cost.model
    lo, hi = model.arch_ms(space.sample_indices("min")), model.arch_ms(space.sample_indices("max"))
    assert hi > 3 * lo > 0  # widest > narrowest, by MACs
    logits = ArchChoice(width=[torch.zeros(len(o), requires_grad=True) for o in space.group_options],
                        expansion=[torch.zeros(len(b.mid_options), requires_grad=True) for b in space.blocks])
    probs = logits.map(lambda w: w.softmax(0))
    lat = model.expected_ms(probs)
    lat.backward()
    assert lo < float(lat.detach()) < hi
    grads = [g.grad for g in (*logits.width, *logits.expansion)]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # more width or expansion costs more MACs: the gradient favours the first (narrowest) option
    assert all(g[-1] > g[0] for g in grads if g.numel() > 1)


def test_proxy_is_the_macs_of_the_derived_net():
    from dnas.model_stats import count_macs
    from dnas.latency.cost import LatencyModel
    from dnas.latency.profile import build_entry_module
    from dnas.models import PlainNet

    space = load_space("tiny")
    entries = space_entries(space) + [e for e in space_entries(space.with_attention("dcs", "softmax"))
                                      if e.kind == "dcs"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for e in entries[::3]:  # the analytic count is fvcore's, entry by entry
            assert entry_macs(e) == count_macs(build_entry_module(e), list(e.input_shape)), e.key
        model = LatencyModel(macs_table(space), space)  # classifier included, as PlainNet
        for idx in (space.sample_indices("min"), space.sample_indices("max"), space.sample_indices("random", seed=3)):
            arch = SearchSpace.from_dict(space.arch_from_indices(idx))
            assert model.arch_ms(idx) * PROXY_MACS_PER_MS == pytest.approx(count_macs(PlainNet(arch),
                                                                                      arch.input_size))


def test_profile_on_first_use_is_cached_and_reused(tmp_path, fast_profile, monkeypatch, caplog):
    space = load_space(_small_space(tmp_path))
    with caplog.at_level(logging.INFO, logger="dnas.latency.auto"):
        first = _resolve(space)
    path = fast_profile / "latency" / auto.device_slug("cpu") / f"tiny32-{space.structure_hash()[:12]}_b32_fp32.csv"
    assert first.source == f"profiled:{path.resolve()}" and path.is_file()
    assert not path.with_name(path.name.replace(".csv", ".partial.csv")).exists()
    text = caplog.text
    assert "profiling one on first use: 62 entries x 1 passes, about" in text and "(estimate)" in text
    meta = json.loads(path.with_name(path.name.replace(".csv", ".meta.json")).read_text())
    assert meta["auto_profiled"] is True and meta["device"] == "cpu"

    import dnas.latency.profile as profile

    def no_profile(*a, **k):
        raise AssertionError("profiled again")

    monkeypatch.setattr(profile, "profile_space", no_profile)
    second = _resolve(space)
    assert second.source == first.source and "cached, profiled on first use" in second.note
    assert second.table.entries == first.table.entries


def test_an_interrupted_profile_on_first_use_resumes(tmp_path, fast_profile, monkeypatch, caplog):
    import dnas.latency.profile as profile

    space = load_space(_small_space(tmp_path))
    real = profile.make_measure

    def flaky(entries, cfg, tau_m):
        measure, calls = real(entries, cfg, tau_m), []

        def once(key):
            calls.append(key)
            if len(calls) > 20:
                raise KeyboardInterrupt
            return measure(key)

        return once

    monkeypatch.setattr(profile, "make_measure", flaky)
    with pytest.raises(KeyboardInterrupt):
        _resolve(space)
    partial = auto.cache_table_path(space, auto.auto_timing("cpu", 32, "fp32", False))
    partial = partial.with_name(partial.name.replace(".csv", ".partial.csv"))
    assert partial.is_file()
    monkeypatch.setattr(profile, "make_measure", real)
    with caplog.at_level(logging.INFO):
        cost = _resolve(space)
    assert cost.source.startswith("profiled:") and f"continuing {partial}" in caplog.text
    assert "20 of 62 measurements done" in caplog.text and not partial.exists()


def test_budget_zero_never_profiles(tmp_path, fast_profile):
    cost = _resolve(load_space(_small_space(tmp_path)), budget_s=0)
    assert cost.source == "proxy:macs" and "latency_profile_budget_s=0" in cost.note


def test_none_gives_no_cost_and_says_so(caplog):
    from dnas.search.run import _resolve_cost

    for spec in ("none", None):
        with caplog.at_level(logging.WARNING, logger="dnas.search.run"):
            cost = _resolve_cost(SearchConfig(latency_table=spec, device="cpu"), _rt(), progress=False)
        assert cost.source == "none" and cost.model is None
    assert "latency cost: none: no latency cost (latency_table: none)" in caplog.text
    assert SearchConfig().latency_table == "auto"


def test_search_run_records_its_cost_and_a_resume_keeps_it(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    out = tmp_path / "run"
    assert search_cli.main(["--supernet", "tiny", "--out", str(out), *FAST]) == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["latency_table"] == "auto" and cfg["latency_source"] == f"table:{SHIPPED_TINY}"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["latency_cost"] == f"table:{SHIPPED_TINY}"
    assert f"latency cost: table:{SHIPPED_TINY} (shipped;" in caplog.text
    caplog.clear()

    # a resumed run loads the recorded cost, not a new resolution of latency_table
    cfg["latency_source"] = "proxy:macs"
    (out / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert search_cli.main(["--resume", str(out), "--set", "epochs=2", "--no-progress"]) == 0
    assert "latency cost: proxy:macs: the MACs proxy, as the run started" in caplog.text
    assert yaml.safe_load((out / "config.yaml").read_text())["latency_source"] == "proxy:macs"
    assert json.loads((out / "summary.json").read_text())["latency_cost"] == "proxy:macs"


def test_search_with_latency_table_none_records_none(tmp_path, caplog):
    out = tmp_path / "run"
    assert search_cli.main(["--supernet", "tiny", "--out", str(out), "--set", "latency_table=none", *FAST]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["latency_source"] == "none"
    assert json.loads((out / "summary.json").read_text())["latency_cost"] == "none"
    assert any(r.levelname == "WARNING" and r.getMessage().startswith("latency cost: none: ")
               for r in caplog.records)
