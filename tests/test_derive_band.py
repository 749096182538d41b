"""dnas-derive --sample random --latency-ms X: random architectures of a latency band
(the equal-cost baselines of a search), their summary.json figures, the table latency
of --sample max|min|random, and bad input (exit 2, one line, nothing written)."""
import csv
import json
import subprocess

import pytest
from cli_helpers import one_line_error

from dnas.cli import derive as derive_cli
from dnas.latency.band import arch_key
from dnas.latency.cost import LatencyModel
from dnas.latency.table import LatencyTable
from dnas.resources import data_dir
from dnas.space import SearchSpace, load_space

TABLE = data_dir("latency_tables") / "cpu_tiny_b8_fp32.csv"
TARGET, COUNT, SEED = 1.62, 4, 5


@pytest.fixture(autouse=True)
def _no_cached_tables(tmp_path_factory, monkeypatch):
    """Only the shipped table: no table an earlier profile left in the user's cache."""
    monkeypatch.setenv("DNAS_CACHE", str(tmp_path_factory.getbasetemp() / "dnas-cache"))


def table_ms(directory) -> tuple[dict, float]:
    """Index choices of ``directory/arch.yaml`` and their latency on the shipped tiny table."""
    space = load_space("tiny")
    indices = space.indices_from_arch(SearchSpace.load(directory / "arch.yaml"))
    model = LatencyModel(LatencyTable.load(TABLE), space, num_classes=0, bnneck=space.bnneck)
    return indices, model.arch_ms(indices)


@pytest.fixture(scope="module")
def band_dir(tmp_path_factory):
    import contextlib
    import io

    out = tmp_path_factory.mktemp("band") / "band"
    buf = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(buf):
        mp.setenv("DNAS_CACHE", str(tmp_path_factory.getbasetemp() / "dnas-cache"))
        assert derive_cli.main(["--supernet", "tiny", "--sample", "random", "--latency-ms", str(TARGET),
                                "--count", str(COUNT), "--seed", str(SEED), "--no-onnx", "--out", str(out)]) == 0
    return out, buf.getvalue()


def test_band_exports_count_distinct_archs_in_the_band(band_dir):
    out, printed = band_dir
    subs = [f"arch-{i:02d}" for i in range(COUNT)]
    assert sorted(p.name for p in out.iterdir()) == sorted(subs + ["band.csv", ".dnas-output.json"])
    keys, rows = set(), list(csv.DictReader(open(out / "band.csv")))
    assert [r["dir"] for r in rows] == subs
    for i, sub in enumerate(subs):
        summary = json.loads((out / sub / "summary.json").read_text())
        indices, ms = table_ms(out / sub)
        keys.add(arch_key(indices))
        assert abs(summary["latency_ms"] - TARGET) <= 0.03 * TARGET
        assert summary["latency_ms"] == pytest.approx(ms, rel=1e-12)
        assert float(rows[i]["latency_ms"]) == pytest.approx(ms, rel=1e-5)
        assert summary["latency_table"].startswith("table:") and summary["latency_table"].endswith(TABLE.name)
        assert summary["band"] == {"latency_ms": TARGET, "tolerance": 0.03, "seed": SEED, "index": i}
        assert summary["num_classes"] == 10
    assert len(keys) == COUNT  # all distinct
    lines = [ln for ln in printed.splitlines() if "arch-" in ln]  # one line per arch: path, latency, params
    assert len(lines) == COUNT and all(" ms " in ln and "M params" in ln for ln in lines)
    assert lines[0].startswith(str(out / "arch-00"))


def test_same_seed_same_band_and_overwrite(band_dir, tmp_path, capsys):
    out, _ = band_dir
    argv = ["--supernet", "tiny", "--sample", "random", "--latency-ms", str(TARGET), "--seed", str(SEED),
            "--tolerance", "0.03", "--no-onnx"]
    assert derive_cli.main(argv + ["--out", str(tmp_path / "one")]) == 0  # K == 1: directly into --out
    summary = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert summary["band"]["index"] == 0 and (tmp_path / "one" / "model.pt").is_file()
    assert table_ms(tmp_path / "one")[0] == table_ms(out / "arch-00")[0]  # the first draw of the seed
    capsys.readouterr()
    assert derive_cli.main(argv + ["--count", "2", "--out", str(tmp_path / "one")]) == 2  # no --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert derive_cli.main(argv + ["--count", "2", "--overwrite", "--out", str(tmp_path / "one")]) == 0
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == [".dnas-output.json", "arch-00", "arch-01",
                                                                    "band.csv"]


@pytest.mark.parametrize("mode", ["max", "min", "random"])
def test_sample_summary_has_the_table_latency(tmp_path, mode):
    out = tmp_path / mode
    assert derive_cli.main(["--supernet", "tiny", "--sample", mode, "--seed", "2", "--no-onnx", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["latency_ms"] == pytest.approx(table_ms(out)[1], rel=1e-12)
    assert summary["latency_table"].endswith(TABLE.name) and "band" not in summary


def test_sample_without_a_table_skips_the_latency(tmp_path):
    out = tmp_path / "o"
    assert derive_cli.main(["--supernet", "tiny", "--sample", "max", "--latency-table", "none", "--no-onnx",
                            "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert "latency_ms" not in summary and "latency_table" not in summary


BAND = ["--supernet", "tiny", "--sample", "random", "--latency-ms"]


@pytest.mark.parametrize("argv,needle", [
    (["--supernet", "tiny", "--sample", "max", "--latency-ms", "1.6"], "--sample random"),
    (["--supernet", "tiny", "--sample", "random", "--count", "3"], "--latency-ms"),
    (["--supernet", "tiny", "--sample", "random", "--tolerance", "0.1"], "--latency-ms"),
    (BAND + ["0"], "--latency-ms 0.0"),
    (BAND + ["-1.5"], "--latency-ms -1.5"),
    (BAND + ["nan"], "--latency-ms nan"),
    (BAND + ["inf"], "--latency-ms inf"),
    (BAND + ["1.6", "--tolerance", "0"], "--tolerance"),
    (BAND + ["1.6", "--tolerance", "1"], "--tolerance"),
    (BAND + ["1.6", "--tolerance", "-0.1"], "--tolerance"),
    (BAND + ["1.6", "--count", "0"], "--count 0"),
    (BAND + ["1.6", "--latency-table", "none"], "--latency-table"),
    (BAND + ["1.6", "--latency-table", "missing_table.csv"], "missing_table.csv"),
    (["--supernet", "fbnetv2", "--sample", "random", "--latency-ms", "1.6"], "--latency-table"),  # MACs proxy only
    (["--backbone", "mobilenetv2", "--latency-ms", "1.6"], "--latency-ms"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, argv, needle):
    out = tmp_path / "out"
    assert derive_cli.main(argv + ["--no-onnx", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("dnas-derive: error:")]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_band_with_too_few_archs_exits_2(tmp_path, capsys):
    """A band the space cannot fill (tiny spans about 1.27-1.99 ms): the one-line error of the CLI."""
    out = tmp_path / "out"
    argv = BAND + ["0.5", "--count", "2", "--no-onnx", "--out", str(out)]
    rc = derive_cli.main(argv)
    captured = capsys.readouterr()
    one_line_error(subprocess.CompletedProcess(argv, rc, captured.out, captured.err), "dnas-derive",
                   "only 0 of 2", "0.485-0.515 ms", "--tolerance")
    assert not out.exists() and list(tmp_path.iterdir()) == []
