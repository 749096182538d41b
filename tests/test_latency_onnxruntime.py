"""Latency in onnxruntime (dnas/latency/onnx_timing.py): a table of ``tiny`` profiled with
``--runtime onnxruntime`` and its provenance, the per-op timing against PyTorch, validate
and time-net in onnxruntime, an absent provider refused with one line (exit 2), eager
tables (with or without a recorded runtime) read as eager, ``auto`` preferring an eager
table, and ``dnas-derive``'s measured latency beside the table's."""
import json
import math

import onnxruntime as ort
import pytest
import torch

from cli_helpers import cli, one_line_error
from dnas.cli.latency import main
from dnas.errors import LatencyTableError
from dnas.latency.keys import count_by_kind, space_entries
from dnas.latency.onnx_timing import (PROVIDERS, check_timing, export_for_timing, measure_in_runtime,
                                      measure_onnx_file)
from dnas.latency.profile import build_entry_module
from dnas.latency.table import LatencyTable, find_table, table_paths
from dnas.latency.timing import TimingConfig
from dnas.space import load_space
from latency_fixtures import copy_table, measured_tiny_table

FAST = ["--batch", "2", "--passes", "1", "--windows", "1", "--window-ms", "0.2", "--warmup", "1", "--no-progress"]
ORT_CPU = TimingConfig(device="cpu", batch=2, warmup=1, windows=3, window_ms=0.5, runtime="onnxruntime",
                       provider="cpu")


@pytest.fixture(scope="module")
def ort_table(tmp_path_factory):
    """A CPU onnxruntime table of ``tiny`` (one fast pass), made by ``dnas-latency profile``
    in two steps: stopped at once by ``--time-limit 0``, then continued."""
    out = tmp_path_factory.mktemp("ort") / "tiny_ort"
    argv = ["profile", "--supernet", "tiny", "--runtime", "onnxruntime", "--provider", "cpu", "--out", str(out),
            "--num-classes", "10", *FAST]
    assert main([*argv, "--time-limit", "0"]) == 0
    partial = LatencyTable.load(f"{out}.partial.csv", allow_incomplete=True)
    assert not partial.is_complete and "--runtime onnxruntime --provider cpu" in partial.continue_command()
    assert main(argv) == 0
    return table_paths(out)[0]


def test_profile_records_the_runtime(ort_table, capsys):
    table = LatencyTable.load(ort_table, load_space("tiny"))
    m = table.meta
    assert table.runtime == "onnxruntime" and table.method == "onnxruntime-cpu" and m["provider"] == "cpu"
    assert m["protocol"]["runtime"] == "onnxruntime" and m["protocol"]["provider"] == "cpu"
    assert m["onnxruntime"]["version"] == ort.__version__
    assert m["onnxruntime"]["intra_op_num_threads"] == 1
    assert m["onnxruntime"]["graph_optimization_level"] == "ORT_ENABLE_ALL"
    assert m["onnxruntime"]["execution_provider"] == "CPUExecutionProvider"
    assert "onnxruntime" in m["mode"]
    counts = count_by_kind(space_entries(load_space("tiny"), num_classes=[10]))
    assert len(table) == sum(counts.values())
    assert all(math.isfinite(ms) and ms > 0 for ms in table.entries.values())
    capsys.readouterr()
    assert main(["show", str(ort_table)]) == 0
    shown = capsys.readouterr().out
    assert f"runtime   onnxruntime {ort.__version__}, provider cpu (CPUExecutionProvider)" in shown
    assert "method onnxruntime-cpu" in shown


def test_resume_refuses_another_runtime(ort_table, tmp_path, capsys):
    out = tmp_path / "t"
    assert main(["profile", "--supernet", "tiny", "--out", str(out), "--time-limit", "0", *FAST]) == 0  # eager
    capsys.readouterr()
    assert main(["profile", "--supernet", "tiny", "--runtime", "onnxruntime", "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dnas-latency: error:") and "\n" not in err and "--restart" in err, err


def test_onnx_timing_runs_what_pytorch_computes(tmp_path):
    """The exported module computes the PyTorch module's function, and a 20x larger op
    times longer than a small one."""
    entries = {e.key: e for e in space_entries(load_space("tiny"), num_classes=[10])}
    small = next(e for k, e in entries.items() if k.startswith("classifier/"))
    large = max((e for e in entries.values() if e.kind == "block"),
                key=lambda e: dict(e.fields)["mid_chs"] * dict(e.fields)["in_chs"])
    module = build_entry_module(large).eval()
    path = export_for_timing(module, large.input_shape, ORT_CPU, tmp_path / "large.onnx")
    x = torch.randn(ORT_CPU.batch, *large.input_shape)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = module(x).numpy()
    assert got.shape == want.shape and abs(got - want).max() < 1e-4
    ms_large = measure_onnx_file(path, large.input_shape, ORT_CPU)
    ms_small = measure_in_runtime(build_entry_module(small), small.input_shape, ORT_CPU)
    assert 0 < ms_small < ms_large / 2, (ms_small, ms_large)


def test_validate_and_time_net_in_onnxruntime(ort_table, tmp_path, capsys):
    report_path = tmp_path / "report.json"
    assert main(["validate", "--supernet", "tiny", "--table", str(ort_table), "--archs", "2", "--passes", "1",
                 "--out", str(report_path), "--no-progress"]) == 0
    report = json.loads(report_path.read_text())
    assert report["timing"]["method"] == "onnxruntime-cpu" and report["table_method"] == "onnxruntime-cpu"
    assert report["n_archs"] == 4 and all(a["measured_ms"] > 0 for a in report["archs"])
    # an eager table's sums against whole nets run in onnxruntime: the additivity comparison
    eager = copy_table(measured_tiny_table(), tmp_path, "eager")
    capsys.readouterr()
    assert main(["validate", "--supernet", "tiny", "--table", str(eager), "--archs", "2", "--passes", "1",
                 "--runtime", "onnxruntime", "--out", str(report_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "profiled with eager, the networks measured with onnxruntime-cpu" in out
    report = json.loads(report_path.read_text())
    assert report["measured_method"] == "onnxruntime-cpu" and report["table_method"] == "eager"
    assert "runtime" not in LatencyTable.load(eager).meta["protocol"]  # the table was not changed
    from dnas.cli import derive

    derived = tmp_path / "derived"
    assert derive.main(["--supernet", "tiny", "--sample", "min", "--no-onnx", "--no-measure", "--out",
                        str(derived)]) == 0
    capsys.readouterr()
    assert main(["time-net", str(derived), "--runtime", "onnxruntime", "--batch", "2", "--passes", "2", "--windows",
                 "2", "--json"]) == 0
    timing = json.loads(capsys.readouterr().out)
    assert timing["runtime"] == "onnxruntime" and timing["provider"] == "cpu" and timing["method"] == "onnxruntime-cpu"
    assert timing["onnxruntime"]["version"] == ort.__version__ and timing["samples"] == 2 and timing["ms"] > 0


@pytest.mark.skipif(set(PROVIDERS.values()) <= set(ort.get_available_providers()),
                    reason="every provider is here")
def test_absent_provider_and_bad_runtime_options_exit_2(ort_table, tmp_path, capsys):
    absent = next(p for p, name in PROVIDERS.items() if name not in ort.get_available_providers())
    out = tmp_path / "gpu"
    proc = cli("dnas-latency", "profile", "--supernet", "tiny", "--runtime", "onnxruntime", "--provider", absent,
               "--out", out)  # the console script itself: one line, exit 2, no traceback
    one_line_error(proc, "dnas-latency", f"provider {absent}", PROVIDERS[absent], "onnxruntime-gpu")
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a lock or a partial table
    for argv, fragment in (
            (["validate", "--supernet", "tiny", "--table", str(ort_table), "--provider", absent], f"provider {absent}"),
            (["time-net", "tiny", "--runtime", "onnxruntime", "--provider", absent], f"provider {absent}"),
            (["profile", "--supernet", "tiny", "--provider", "cpu"], "--provider cpu applies to --runtime onnxruntime"),
            (["profile", "--supernet", "tiny", "--runtime", "onnxruntime", "--dtype", "bf16"], "only fp32"),
            (["profile", "--supernet", "tiny", "--runtime", "onnxruntime", "--channels-last"], "--channels-last"),
            (["profile", "--supernet", "tiny", "--runtime", "onnxruntime", "--device", "cuda", "--provider", "cpu"],
             "runs on cpu")):
        if argv[0] == "profile":
            argv = [*argv, "--out", str(out)]
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("dnas-latency: error:") and "\n" not in err and fragment in err, err
    assert list(tmp_path.iterdir()) == []


def test_eager_tables_read_as_eager(tmp_path, capsys):
    shipped = LatencyTable.load(find_table("cpu_tiny_b8_fp32"))
    assert "runtime" not in shipped.meta and shipped.runtime == "eager" and shipped.method == "eager"
    cfg = TimingConfig.from_dict(shipped.meta["protocol"])
    assert cfg.runtime == "eager" and cfg.provider is None and check_timing(cfg).type == "cpu"
    assert main(["show", "cpu_tiny_b8_fp32"]) == 0
    assert "runtime   eager PyTorch (no runtime recorded: an eager table)" in capsys.readouterr().out
    fresh = LatencyTable.load(measured_tiny_table())  # profiled now: the runtime recorded, the protocol as before
    assert fresh.meta["runtime"] == "eager" and "runtime" not in fresh.meta["protocol"]
    bad = copy_table(measured_tiny_table(), tmp_path, "bad")
    meta_path = table_paths(bad)[1]
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "runtime": "tflite"}))
    with pytest.raises(LatencyTableError, match="key 'runtime': expected one of eager, onnxruntime"):
        LatencyTable.load(bad)


def test_auto_prefers_an_eager_table_and_names_the_runtime(ort_table, tmp_path, monkeypatch):
    from dnas.latency.auto import resolve_latency_cost

    space = load_space("tiny")
    home = tmp_path / "home" / "latency_tables"
    home.mkdir(parents=True)
    ort_copy = copy_table(ort_table, home, "a_ort")
    meta_path = table_paths(ort_copy)[1]  # the onnxruntime table wins every other preference
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "batch": 8, "calibration": {"a": 0.0, "b": 1.0}}))
    monkeypatch.setenv("DNAS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DNAS_CACHE", str(tmp_path / "cache"))
    only = resolve_latency_cost("auto", space, "cpu", supernet="tiny", batch=8, budget_s=0)
    assert only.source.endswith("a_ort.csv") and "optimises for onnxruntime (cpu)" in only.note
    copy_table(measured_tiny_table(), home, "b_eager")
    both = resolve_latency_cost("auto", space, "cpu", supernet="tiny", batch=8, budget_s=0)
    assert both.source.endswith("b_eager.csv") and "optimises for eager PyTorch" in both.note


def test_derive_measures_beside_the_table_when_it_is_this_machines(ort_table, tmp_path):
    from dnas.cli import derive

    out = tmp_path / "d"
    assert derive.main(["--supernet", "tiny", "--sample", "min", "--no-onnx", "--latency-table", str(ort_table),
                        "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["latency_ms"] > 0 and summary["measured_latency_ms"] > 0
    how = summary["measured_latency"]
    assert how["runtime"] == "onnxruntime" and how["method"] == "onnxruntime-cpu"
    assert how["protocol"]["batch"] == 2 and how["protocol"]["passes"] == 1 and how["table"] == str(ort_table)
    other = copy_table(ort_table, tmp_path, "other")
    meta_path = table_paths(other)[1]
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "device_name": "Another CPU"}))
    assert derive.main(["--supernet", "tiny", "--sample", "min", "--no-onnx", "--latency-table", str(other),
                        "--out", str(tmp_path / "d2")]) == 0
    summary = json.loads((tmp_path / "d2" / "summary.json").read_text())
    assert "measured_latency_ms" not in summary and "Another CPU" in summary["measured_latency_skipped"]
    assert derive.main(["--supernet", "tiny", "--sample", "min", "--no-onnx", "--no-measure", "--latency-table",
                        str(ort_table), "--out", str(tmp_path / "d3")]) == 0
    summary = json.loads((tmp_path / "d3" / "summary.json").read_text())
    assert summary["latency_ms"] > 0 and not any(k.startswith("measured_latency") for k in summary)
