"""``--overwrite`` replaces only what the same command wrote (issue 12, data loss):
never the working directory, a directory holding an input, a file or a foreign
directory; ``--out .`` and ``--out FILE`` leave nothing behind; a bad input never costs
the old run; the README's set-up chain keeps working."""
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from cli_helpers import ROOT, RETRAIN_FAST, SEARCH_FAST, cli, leftovers, one_line_error, runs  # noqa: F401 (fixture)
from dnas.outputs import MARKER, output_kind

DERIVE_MAX = ["--supernet", "tiny", "--sample", "max", "--no-onnx"]


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def test_derive_refuses_the_working_directory(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    proc = cli("dnas-derive", *DERIVE_MAX, "--out", tmp_path, "--overwrite", cwd=tmp_path)
    one_line_error(proc, "dnas-derive", "working directory")
    assert (tmp_path / "keep.txt").read_text() == "mine" and leftovers(tmp_path) == []


def test_derive_out_dot_leaves_no_temporary(tmp_path):
    work = tmp_path / "empty"
    work.mkdir()
    proc = cli("dnas-derive", *DERIVE_MAX, "--out", ".", "--overwrite", cwd=work)
    one_line_error(proc, "dnas-derive", "working directory")
    assert list(work.iterdir()) == [] and leftovers(tmp_path) == []


def test_derive_refuses_to_replace_its_input_run(runs):
    before = _snapshot(runs["search"])
    proc = cli("dnas-derive", runs["search"], "--no-onnx", "--out", runs["search"], "--overwrite")
    one_line_error(proc, "dnas-derive", "holds the input")
    assert _snapshot(runs["search"]) == before


def test_derive_refuses_a_parent_of_its_input(runs, tmp_path):
    parent = tmp_path / "parent"
    shutil.copytree(runs["search"], parent / "run")
    proc = cli("dnas-derive", parent / "run", "--no-onnx", "--out", parent, "--overwrite")
    one_line_error(proc, "dnas-derive", "holds the input")
    assert (parent / "run" / "checkpoint-last.pt").is_file()


def test_derive_refuses_a_foreign_directory(tmp_path):
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    proc = cli("dnas-derive", *DERIVE_MAX, "--out", foreign, "--overwrite")
    one_line_error(proc, "dnas-derive", str(foreign), "dnas did not write")
    assert (foreign / "thesis.tex").read_text() == "years of work"


def test_derive_refuses_a_search_run_as_output(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["search"], run)
    proc = cli("dnas-derive", *DERIVE_MAX, "--out", run, "--overwrite")
    one_line_error(proc, "dnas-derive", "dnas-search run")
    assert (run / "checkpoint-last.pt").is_file()


@pytest.mark.parametrize("overwrite", [False, True])
def test_derive_out_an_existing_file(tmp_path, overwrite):
    target = tmp_path / "model.bin"
    target.write_text("a file")
    proc = cli("dnas-derive", *DERIVE_MAX, "--out", target, *(["--overwrite"] if overwrite else []))
    one_line_error(proc, "dnas-derive", str(target), "is a file")
    assert target.read_text() == "a file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]  # no .model.bin.old


def test_derive_overwrite_replaces_its_own_output(tmp_path):
    out = tmp_path / "d"
    assert cli("dnas-derive", *DERIVE_MAX, "--out", out).returncode == 0
    assert output_kind(out) == "derived" and json.loads((out / MARKER).read_text())["command"] == "dnas-derive"
    proc = cli("dnas-derive", *DERIVE_MAX, "--out", out)
    one_line_error(proc, "dnas-derive", "--overwrite")
    assert cli("dnas-derive", *DERIVE_MAX, "--out", out, "--overwrite").returncode == 0
    assert (out / "model.pt").is_file() and leftovers(tmp_path) == []


def test_derive_overwrite_accepts_an_output_written_before_markers(tmp_path):
    out = tmp_path / "d"
    assert cli("dnas-derive", *DERIVE_MAX, "--out", out).returncode == 0
    (out / MARKER).unlink()  # as written by an older dnas
    assert output_kind(out) == "derived"
    assert cli("dnas-derive", *DERIVE_MAX, "--out", out, "--overwrite").returncode == 0


def _refused_unchanged(source, tmp_path, prog: str, needle: str, argv) -> None:
    """A copy of ``source`` given as ``--out`` with ``--overwrite``: one-line refusal, copy unchanged.

    ``argv(out)`` builds the command's arguments around the copy's path.
    """
    out = tmp_path / "out"
    shutil.copytree(source, out)
    before = _snapshot(out)
    one_line_error(cli(prog, *argv(out), "--overwrite"), prog, needle)
    assert _snapshot(out) == before


def test_search_overwrite_refuses_a_retrain_run(runs, tmp_path):
    _refused_unchanged(runs["reid"], tmp_path, "dnas-search", "dnas-retrain reid run",
                       lambda out: [*SEARCH_FAST, "--out", out])


def test_retrain_overwrite_refuses_a_search_run(runs, tmp_path):
    _refused_unchanged(runs["search"], tmp_path, "dnas-retrain", "dnas-search run",
                       lambda out: ["reid", "--arch", runs["derived"], "--data", "synthetic", "--out", out,
                                    *RETRAIN_FAST])


def test_search_refuses_a_foreign_nonempty_directory(tmp_path):
    foreign = tmp_path / "data"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("x")
    for extra in ([], ["--overwrite"]):
        proc = cli("dnas-search", *SEARCH_FAST, "--out", foreign, *extra)
        one_line_error(proc, "dnas-search", "dnas did not write")
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_search_refuses_the_working_directory(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    proc = cli("dnas-search", *SEARCH_FAST, "--out", ".", "--overwrite", cwd=tmp_path)
    one_line_error(proc, "dnas-search", "working directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_search_overwrite_keeps_the_old_run_when_the_input_is_bad(runs, tmp_path):
    _refused_unchanged(runs["search"], tmp_path, "dnas-search", "missing",
                       lambda out: [*SEARCH_FAST, "--data", f"market1501:{tmp_path / 'missing'}", "--out", out])


def test_retrain_overwrite_keeps_the_old_run_when_the_input_is_bad(runs, tmp_path):
    _refused_unchanged(runs["reid"], tmp_path, "dnas-retrain", "missing",
                       lambda out: ["reid", "--arch", runs["derived"], "--data",
                                    f"market1501:{tmp_path / 'missing'}", "--out", out, *RETRAIN_FAST])


def test_retrain_refuses_an_output_that_holds_its_arch(runs, tmp_path):
    reid = tmp_path / "reid"
    shutil.copytree(runs["reid"], reid)
    proc = cli("dnas-retrain", "reid", "--arch", reid / "final", "--data", "synthetic", "--out", reid,
               "--overwrite", *RETRAIN_FAST)
    one_line_error(proc, "dnas-retrain", "holds the input")
    assert (reid / "final" / "model.pt").is_file()


def test_run_directories_carry_their_marker(runs):
    assert output_kind(runs["search"]) == "search-run" and (runs["search"] / MARKER).is_file()
    assert output_kind(runs["reid"]) == "reid-run" and (runs["reid"] / MARKER).is_file()
    assert output_kind(runs["reid"] / "final") == "derived"  # exported with overwrite=True: still works
    assert output_kind(runs["derived"]) == "derived"


@pytest.mark.parametrize("prog", ["dnas-search", "dnas-retrain"])
def test_training_out_an_existing_file(runs, tmp_path, prog):
    target = tmp_path / "file"
    target.write_text("x")
    argv = [*SEARCH_FAST] if prog == "dnas-search" else ["reid", "--arch", runs["derived"], *RETRAIN_FAST]
    proc = cli(prog, *argv, "--out", target, "--overwrite")
    one_line_error(proc, prog, "is a file")
    assert target.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_profile_overwrite_refuses_a_file_that_is_no_table(tmp_path):
    victim = tmp_path / "results.csv"
    victim.write_text("a,b\n1,2\n")
    proc = cli("dnas-latency", "profile", "--supernet", "tiny", "--device", "cpu", "--out", victim, "--overwrite")
    one_line_error(proc, "dnas-latency", "not a latency table")
    assert victim.read_text() == "a,b\n1,2\n"


@pytest.mark.parametrize("prog", ["dnas-derive", "dnas-search", "dnas-latency"])
def test_out_below_a_file(tmp_path, prog):
    (tmp_path / "f").write_text("x")
    argv = {"dnas-derive": DERIVE_MAX, "dnas-search": SEARCH_FAST,
            "dnas-latency": ["profile", "--supernet", "tiny", "--device", "cpu"]}[prog]
    proc = cli(prog, *argv, "--out", tmp_path / "f" / "sub")
    one_line_error(proc, prog, "is a file")


_AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
_CAN_DROP = os.geteuid() != 0 or (shutil.which("setpriv") is not None and os.access(sys.executable, os.X_OK))
_SOURCE = ("dnas", "supernets", "search", "retrain", "latency_tables", "backbones")


def _open_to_all(top: Path) -> None:
    """World-readable files and world-enterable directories under ``top``."""
    for d, dirs, files in os.walk(top):
        os.chmod(d, 0o755)
        for f in files:
            os.chmod(os.path.join(d, f), 0o644)


@pytest.fixture(scope="module")
def readable_checkout():
    """The source tree the unprivileged user runs: the checkout itself when the tests do
    not run as root, else a world-readable copy of the package and its data folders (a
    checkout under a 0700 directory, e.g. a home directory or a ``mktemp -d`` folder, is
    out of that user's reach). Skips, naming why, when that user cannot start the
    interpreter on the copy."""
    if os.geteuid() != 0:
        yield ROOT
        return
    import subprocess
    import tempfile

    from cli_helpers import env

    base = Path(tempfile.mkdtemp(prefix="dnas-src-"))
    try:
        for name in _SOURCE:
            shutil.copytree(ROOT / name, base / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        _open_to_all(base)
        probe = subprocess.run(_AS_NOBODY + [sys.executable, "-c", "import dnas.cli.derive"], cwd=base,
                               capture_output=True, text=True, env=dict(env(), PYTHONPATH=str(base), HOME=str(base)),
                               timeout=300)
        if probe.returncode != 0:
            why = (probe.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(f"the unprivileged user cannot run {sys.executable} on a readable copy of the package "
                        f"({why}); install the environment where that user can read it")
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.skipif(not _CAN_DROP, reason="root writes into read-only directories and setpriv is missing")
@pytest.mark.parametrize("prog", ["dnas-derive", "dnas-search", "dnas-retrain", "dnas-latency", "validate --plot"])
def test_out_in_a_read_only_directory(prog, readable_checkout):
    import subprocess
    import tempfile

    from cli_helpers import MODULES, env

    src = readable_checkout
    base = Path(tempfile.mkdtemp(prefix="dnas-ro-"))  # not under pytest's 0700 tmp: nobody must reach it
    try:
        base.chmod(0o777)
        ro = base / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        table = src / "latency_tables" / "cpu_tiny_b8_fp32.csv"
        search_fast = [a.replace(str(ROOT), str(src)) for a in SEARCH_FAST]
        argv = {"dnas-derive": [*DERIVE_MAX, "--out", ro / "x"], "dnas-search": [*search_fast, "--out", ro / "x"],
                "dnas-retrain": ["reid", "--arch", src / "supernets" / "tiny.yaml", "--out", ro / "x"],
                "dnas-latency": ["profile", "--supernet", "tiny", "--device", "cpu", "--out", ro / "t"],
                "validate --plot": ["validate", "--supernet", "tiny", "--table", table, "--plot", ro / "p.png"]}[prog]
        name = "dnas-latency" if prog.startswith("validate") else prog
        cmd = [sys.executable, "-m", MODULES[name], *map(str, argv)]
        proc = subprocess.run(([] if os.geteuid() else _AS_NOBODY) + cmd, cwd=base, capture_output=True, text=True,
                              env=dict(env(), PYTHONPATH=str(src), HOME=str(base), DNAS_CACHE=str(base / "cache")),
                              timeout=300)
        one_line_error(proc, name, "permission denied", str(ro))
        assert list(ro.iterdir()) == []
    finally:
        (base / "ro").chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


def test_atomic_directory_replaces_without_leftovers(tmp_path):
    from dnas.errors import DnasError
    from dnas.outputs import atomic_directory

    out = tmp_path / "d"
    for i in range(2):
        with atomic_directory(out, overwrite=True, kind="derived") as tmp:
            (tmp / "x").write_text(str(i))
    assert (out / "x").read_text() == "1" and output_kind(out) == "derived" and leftovers(tmp_path) == []
    with pytest.raises(DnasError, match="is a file"):
        with atomic_directory(out / "x", overwrite=True):
            pass
    with pytest.raises(RuntimeError):
        with atomic_directory(out, overwrite=True, kind="derived") as tmp:
            raise RuntimeError("boom")
    assert (out / "x").read_text() == "1" and leftovers(tmp_path) == []


@pytest.mark.slow
def test_readme_setup_chain_reruns(tmp_path):
    """search --out runs/tiny --overwrite, then derive runs/tiny --out runs/tiny/derived --overwrite, twice."""
    for _ in range(2):
        assert cli("dnas-search", *SEARCH_FAST, "--out", "runs/tiny", "--overwrite", cwd=tmp_path).returncode == 0
        proc = cli("dnas-derive", "runs/tiny", "--no-onnx", "--out", "runs/tiny/derived", "--overwrite", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert output_kind(tmp_path / "runs/tiny") == "search-run"
    assert output_kind(tmp_path / "runs/tiny/derived") == "derived"
    assert leftovers(tmp_path / "runs") == [] and leftovers(tmp_path / "runs/tiny") == []
