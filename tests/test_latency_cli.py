"""dnas-latency in-process: profile (dry run and a fast CPU run), validate (report,
plot, calibration stored), show; bad input exits 2 with one line on stderr."""
import json

import pytest
import torch

from dnas.cli.latency import main
from dnas.latency.keys import count_by_kind, space_entries
from dnas.latency.table import LatencyTable, table_paths
from dnas.latency.validate import fit_linear, rankdata, spearman
from dnas.space import load_space
from latency_fixtures import measured_tiny_table, tiny_table_path  # noqa: F401  (fixture)

FAST = ["--device", "cpu", "--batch", "2", "--passes", "1", "--windows", "1", "--window-ms", "0.2", "--warmup", "1",
        "--no-progress"]


def _one_line_error(capsys, *fragments):
    err = capsys.readouterr().err.strip()
    assert err.startswith("dnas-latency: error:") and "\n" not in err, err
    for f in fragments:
        assert f in err, err
    return err


def test_dry_run_prints_counts_per_kind(capsys):
    assert main(["profile", "--supernet", "xlarge", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2759 entries" in out and "block       2682" in out and "dcs         60" in out


def test_profile_show_and_overwrite(tmp_path, capsys):
    out = tmp_path / "tables" / "tiny_cpu"
    assert main(["profile", "--supernet", "tiny", "--out", str(out), "--num-classes", "10", "60", *FAST]) == 0
    csv_path, meta_path = table_paths(out)
    assert csv_path.is_file() and meta_path.is_file()
    assert not (tmp_path / "tables" / "tiny_cpu.partial.json").exists()
    table = LatencyTable.load(csv_path)
    counts = count_by_kind(space_entries(load_space("tiny"), num_classes=[10, 60]))
    assert len(table) == sum(counts.values()) and table.meta["num_classes"] == [10, 60]
    assert counts["classifier"] == 4  # 2 sizes x BNNeck on/off
    capsys.readouterr()
    assert main(["show", str(csv_path)]) == 0
    shown = capsys.readouterr().out
    assert "space     tiny" in shown and "method eager" in shown and f"{'block':<11} {counts['block']:>6}" in shown
    assert main(["show", str(csv_path), "--json", "--compare", str(measured_tiny_table())]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["summary"]["block"]["count"] == counts["block"] and data["compare"]["all"] >= 0
    assert main(["profile", "--supernet", "tiny", "--out", str(out), *FAST]) == 2
    _one_line_error(capsys, "table exists", "--overwrite")


def test_validate_writes_report_plot_and_calibration(tiny_table_path, tmp_path, capsys):
    report_path, plot_path = tmp_path / "r" / "report.json", tmp_path / "r" / "scatter.png"
    argv = ["validate", "--supernet", "tiny", "--table", str(tiny_table_path), "--archs", "4", "--passes", "1",
            "--out", str(report_path), "--plot", str(plot_path), "--save-calibration", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "spearman" in out and "calibration: measured ~=" in out
    report = json.loads(report_path.read_text())
    assert report["n_archs"] == 6 and {a["name"] for a in report["archs"]} >= {"min", "max"}
    for part in ("raw", "calibrated"):
        assert set(report[part]) >= {"spearman", "mape_pct", "within_10pct"}
        assert 0.0 <= report[part]["within_10pct"] <= 1.0
    assert all(a["predicted_ms"] > 0 and a["measured_ms"] > 0 for a in report["archs"])
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cal = LatencyTable.load(tiny_table_path).calibration
    assert cal == pytest.approx((report["calibration"]["a"], report["calibration"]["b"]))


def test_bad_input_exits_2(tiny_table_path, tmp_path, capsys):
    assert main(["profile", "--supernet", "nope", "--dry-run"]) == 2
    _one_line_error(capsys, "nope")
    assert main(["validate", "--supernet", "tiny", "--table", str(tmp_path / "missing.csv")]) == 2
    _one_line_error(capsys, "missing.csv", "not found")
    assert main(["validate", "--supernet", "fbnetv2", "--table", str(tiny_table_path)]) == 2
    _one_line_error(capsys, "structure hash", "fbnetv2")
    assert main(["profile", "--supernet", "tiny", "--device", "cpu"]) == 2
    _one_line_error(capsys, "--out")
    assert main(["profile", "--supernet", "tiny", "--out", str(tmp_path / "x"), "--passes", "0"]) == 2
    _one_line_error(capsys, "--passes")
    if not torch.cuda.is_available():
        assert main(["profile", "--supernet", "tiny", "--device", "cuda", "--out", str(tmp_path / "x")]) == 2
        _one_line_error(capsys, "CUDA is not available")


def test_missing_key_exits_2_naming_it(tiny_table_path, capsys):
    csv_path, meta_path = table_paths(tiny_table_path)
    lines = csv_path.read_text().splitlines()
    victim = next(i for i, line in enumerate(lines) if line.startswith("head/"))
    key = lines[victim].split(",")[0]
    csv_path.write_text("\n".join(lines[:victim] + lines[victim + 1:]) + "\n")
    meta = json.loads(meta_path.read_text())
    meta["entries"] -= 1
    meta_path.write_text(json.dumps(meta))
    assert main(["validate", "--supernet", "tiny", "--table", str(csv_path), "--archs", "30", "--no-progress"]) == 2
    _one_line_error(capsys, "no entry for key", key)


def test_help_texts():
    for argv in (["--help"], ["profile", "--help"], ["validate", "--help"], ["show", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0


def test_statistics_helpers():
    assert list(rankdata([10, 20, 20, 5])) == [2.0, 3.5, 3.5, 1.0]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 100]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    a, b = fit_linear([1.0, 2.0, 3.0], [2.5, 4.5, 6.5])
    assert (a, b) == pytest.approx((0.5, 2.0))
    assert fit_linear([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx((0.0, 1.0))  # scale-only fallback
    a, b = fit_linear([1.0, 2.0, 3.0, 4.0, 5.0], [1.5, 2.5, 3.5, 40.0, 5.5])  # one outlier ignored
    assert (a, b) == pytest.approx((0.5, 1.0))
