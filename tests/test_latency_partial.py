"""Incomplete latency tables as committed resume state (NAME.partial.csv + meta): a time
limit leaves one, the printed command continues it, ``show`` says how complete it is,
a search and ``latency_table: auto`` never use one; ``dnas-latency time-net`` times a
whole derived net; progress bars only on a terminal, validate counting archs."""
import json
import logging
import shlex
import sys
from pathlib import Path

import pytest

from dnas.cli import derive as derive_cli
from dnas.cli import search as search_cli
from dnas.cli.latency import main
from dnas.latency import auto
from dnas.latency.keys import space_entries
from dnas.latency.profile import profile_meta, profile_space, samples_table
from dnas.latency.table import IncompleteTableError, LatencyTable, partial_paths, table_paths
from dnas.latency.timing import TimingConfig, round_robin, show_progress
from dnas.space import load_space
from latency_fixtures import FAST_TIMING, measured_tiny_table, tiny_table_path  # noqa: F401  (fixture)

FAST = ["--device", "cpu", "--batch", "2", "--passes", "2", "--windows", "1", "--window-ms", "0.2", "--warmup", "1",
        "--no-progress"]


def _half_table(out, space=None, passes=2):
    """An incomplete table of ``tiny`` at ``out``: the first half of the entries, one pass each."""
    space = space or load_space("tiny")
    cfg = TimingConfig(**FAST_TIMING)
    entries = space_entries(space)
    meta = profile_meta(space, cfg, passes, 0, [space.num_classes], entries)
    keys = sorted(e.key for e in entries)
    table = samples_table({k: [0.01 * (i + 1)] for i, k in enumerate(keys[: len(keys) // 2])}, meta, passes)
    table.save(partial_paths(out)[0])
    return len(keys), len(keys) - len(keys) // 2


def test_time_limit_leaves_an_incomplete_table_and_its_command_continues_it(tmp_path, capsys):
    out = tmp_path / "tables" / "tiny_cpu"
    assert main(["profile", "--supernet", "tiny", "--out", str(out), "--time-limit", "0.05", *FAST]) == 0
    printed = capsys.readouterr().out
    partial_csv, partial_meta = partial_paths(out)
    assert "incomplete table" in printed and partial_csv.is_file() and partial_meta.is_file()
    assert not table_paths(out)[0].exists()
    with pytest.raises(IncompleteTableError) as exc:
        LatencyTable.load(out)
    assert str(partial_csv) in str(exc.value) and exc.value.total == 62
    partial = LatencyTable.load(out, allow_incomplete=True)
    pr = partial.progress()
    assert not partial.is_complete and pr["total"] == 62 and pr["passes"] == 2 and pr["fraction"] < 1
    assert pr["measured"] == len(partial) and pr["missing"] == 62 - len(partial)
    before = {k: partial.stats[k]["pass_ms"] for k in partial.entries}

    command = printed.split("continue it with: ", 1)[1].strip()
    assert command == partial.continue_command()
    argv = shlex.split(command)
    assert argv[:2] == ["dnas-latency", "profile"]
    assert main(argv[1:] + ["--no-progress"]) == 0
    assert "wrote" in capsys.readouterr().out
    table = LatencyTable.load(out)
    assert table.is_complete and len(table) == 62 and not partial_csv.exists() and not partial_meta.exists()
    assert all(len(table.stats[k]["pass_ms"]) == 2 for k in table.entries)
    assert len(table.meta["sessions"]) == 2 and table.meta["sessions"][0] == partial.meta["date"]
    for key, kept in before.items():  # what the first run measured is kept, not measured again
        assert table.stats[key]["pass_ms"][: len(kept)] == kept


def test_show_says_how_complete_a_table_is(tmp_path, capsys):
    out = tmp_path / "t"
    total, missing = _half_table(out)
    assert main(["show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert f"complete  NO: {total - missing} of {total} entries measured, {missing} missing" in shown
    assert "continue  dnas-latency profile --supernet tiny --device cpu --batch 2" in shown
    assert main(["show", str(partial_paths(out)[0]), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["complete"] is False and data["progress"]["missing"] == missing
    assert data["continue"].endswith(f"--out {out}")
    assert main(["show", str(measured_tiny_table())]) == 0
    assert "complete  yes: 62 entries" in capsys.readouterr().out


def test_validate_and_a_search_refuse_an_incomplete_table_in_one_line(tmp_path, capsys):
    out = tmp_path / "t"
    total, missing = _half_table(out)
    assert main(["validate", "--supernet", "tiny", "--table", str(out) + ".csv", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "incomplete latency table" in err and f"{missing} of {total} entries missing" in err
    for spec in (f"{out}.csv", f"{out}.partial.csv"):
        run = tmp_path / f"run-{len(spec)}"
        assert search_cli.main(["--supernet", "tiny", "--out", str(run), "--set", f"latency_table={spec}",
                                "--set", "epochs=1", "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err, err
        assert str(partial_paths(out)[0]) in err and f"{missing} of {total} entries missing" in err
        assert f"continue it with 'dnas-latency profile --supernet tiny" in err and "latency_table=auto" in err
        assert not run.exists()


def test_auto_never_uses_an_incomplete_table(tmp_path, monkeypatch, caplog):
    text = Path(load_space("tiny").source).read_text().replace("input_size: [3, 64, 32]", "input_size: [3, 32, 16]")
    (tmp_path / "tiny32.yaml").write_text(text.replace("name: tiny", "name: tiny32"))
    space = load_space(tmp_path / "tiny32.yaml")
    monkeypatch.setenv("DNAS_CACHE", str(tmp_path / "cache"))
    folder = auto.latency_cache_dir() / auto.device_slug("cpu")
    folder.mkdir(parents=True)
    _half_table(folder / "tiny32_b32_fp32", space)
    with caplog.at_level(logging.INFO, logger="dnas.latency.auto"):
        cost = auto.resolve_latency_cost("auto", space, "cpu", supernet=str(space.source), batch=32, budget_s=0,
                                         progress=False)
    assert cost.source == "proxy:macs"
    assert "is an incomplete table" in caplog.text and "not used" in caplog.text


def test_profile_restart_drops_the_incomplete_table(tmp_path, capsys):
    out = tmp_path / "t"
    _half_table(out)
    assert main(["profile", "--supernet", "tiny", "--out", str(out), "--restart", "--time-limit", "0", *FAST]) == 0
    assert "0 of 62 entries measured" in capsys.readouterr().out
    assert len(LatencyTable.load(out, allow_incomplete=True)) == 0


def test_a_partial_made_with_other_settings_is_refused(tmp_path):
    out = tmp_path / "t"
    _half_table(out)
    cfg = TimingConfig(**{**FAST_TIMING, "batch": 4})
    with pytest.raises(Exception, match="batch=2"):
        profile_space(load_space("tiny"), out, cfg, passes=2, progress=False, log=lambda m: None)


@pytest.fixture(scope="module")
def derived_tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("derive") / "tiny-r2"
    assert derive_cli.main(["--supernet", "tiny", "--sample", "random", "--seed", "2", "--out", str(out)]) == 0
    return out


def test_time_net_times_a_derived_net_with_the_tables_statistics(derived_tiny, capsys):
    argv = ["--batch", "2", "--dtype", "fp32", "--device", "cpu", "--passes", "2", "--windows", "2",
            "--window-ms", "0.5", "--warmup", "1"]
    assert main(["time-net", str(derived_tiny), *argv, "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["ms"] > 0 and rep["samples"] == 2 and len(rep["pass_ms"]) == 2 and rep["spread"] >= 0
    assert min(rep["pass_ms"]) <= rep["ms"] <= max(rep["pass_ms"])
    assert rep["input_size"] == [3, 64, 32] and rep["method"] == "eager" and "weights loaded" in rep["loaded_as"]
    assert rep["images_per_s"] == pytest.approx(2 / rep["ms"] * 1e3)
    assert main(["time-net", str(derived_tiny / "arch.yaml"), *argv, "--height", "32", "--width", "16"]) == 0
    shown = capsys.readouterr().out
    assert "ms per batch of 2" in shown and "input 3x32x16" in shown and "fresh weights" in shown


def test_time_net_bad_input_exits_2(derived_tiny, tmp_path, capsys):
    for argv, fragment in ((["time-net", str(tmp_path / "nope.yaml")], "nope.yaml"),
                           (["time-net", str(derived_tiny), "--batch", "0"], "--batch"),
                           (["time-net", str(derived_tiny), "--window-ms", "-1"], "--window-ms")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("dnas-latency: error:") and "\n" not in err and fragment in err, err


def test_progress_bars_only_on_a_terminal(monkeypatch):
    class Tty:
        def __init__(self, tty):
            self.tty = tty

        def isatty(self):
            return self.tty

        def write(self, s):
            return len(s)

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stderr", Tty(False))
    assert show_progress(True) is False
    monkeypatch.setattr(sys, "stderr", Tty(True))
    assert show_progress(True) is True and show_progress(False) is False


def test_validate_bar_counts_architectures(tiny_table_path, monkeypatch):
    import tqdm

    from dnas.latency.validate import validate_table

    seen = []
    real = tqdm.tqdm

    def recording(*args, **kwargs):
        seen.append((kwargs.get("unit"), kwargs.get("disable")))
        return real(*args, **kwargs)

    monkeypatch.setattr(tqdm, "tqdm", recording)
    table = LatencyTable.load(tiny_table_path)
    validate_table(load_space("tiny"), table, archs=1, passes=1, progress=True)
    assert seen == [("arch", True)]  # counted in archs; not drawn, stderr is no terminal here
    seen.clear()
    round_robin(["a"], lambda k: 1.0, passes=1, progress=True)
    assert seen == [("entry", True)]


def test_time_net_times_a_fixed_backbone(capsys):
    argv = ["time-net", "backbones/mobilenetv2.yaml", "--batch", "1", "--device", "cpu", "--passes", "1",
            "--windows", "1", "--warmup", "1", "--height", "32", "--width", "16", "--json"]
    assert main(argv) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["ms"] > 0 and rep["input_size"] == [3, 32, 16] and rep["params"] > 1e6
