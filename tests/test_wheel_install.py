"""A built package carries its data: the spaces, recipes and latency tables ship in the
wheel and are found through the package, not the checkout; user paths come first.

The wheel test builds the package from a copy of the checkout, installs it with
``pip install --target`` into a temporary folder and runs the console scripts from an
empty directory with ``PYTHONPATH`` set to that folder only (this interpreter supplies
torch and the other dependencies), after checking that ``dnas`` is imported from there.
"""
from __future__ import annotations

import csv
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from dnas.latency.table import find_table
from dnas.resources import DATA_FOLDERS, data_root, find_data_file

ROOT = Path(__file__).resolve().parents[1]
NOT_COPIED = {".git", ".venv", "runs", "build", "dist", ".whl", ".pytest_cache"}


# -- resolution order (fast) --------------------------------------------------------

def test_user_paths_come_first_then_the_shipped_files(tmp_path, monkeypatch):
    monkeypatch.delenv("DNAS_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    shipped = data_root() / "search" / "tiny_synthetic.yaml"
    assert shipped.is_file()
    assert find_data_file("search/tiny_synthetic.yaml", "search", ".yaml") == shipped
    assert find_data_file("tiny_synthetic", "search", ".yaml") == shipped
    assert find_data_file("tiny_synthetic.yaml", "search", ".yaml") == shipped
    assert find_data_file("nope", "search", ".yaml") == Path("nope")  # unchanged: the caller names it
    assert find_data_file("runs/x.yaml", "search", ".yaml") == Path("runs/x.yaml")
    (tmp_path / "search").mkdir()
    (tmp_path / "search" / "tiny_synthetic.yaml").write_text("epochs: 1\n")
    (tmp_path / "tiny_synthetic").mkdir()  # a directory is not a recipe: the shipped one is found
    assert find_data_file("search/tiny_synthetic.yaml", "search", ".yaml") == Path("search/tiny_synthetic.yaml")
    assert find_data_file("tiny_synthetic", "search", ".yaml") == shipped
    table = data_root() / "latency_tables" / "cpu_tiny_b8_fp32.csv"
    assert find_table("latency_tables/cpu_tiny_b8_fp32.csv") == table
    assert find_table("cpu_tiny_b8_fp32") == table.with_suffix("")
    assert find_table("cpu_tiny_b8_fp32.csv") == table


def test_dnas_home_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("DNAS_HOME", str(tmp_path))
    assert data_root() == tmp_path
    assert find_data_file("tiny_synthetic", "search", ".yaml") == Path("tiny_synthetic")


# -- the wheel -------------------------------------------------------------------------

def _offline_build() -> bool:
    """Whether this interpreter's setuptools can build the wheel without an isolated
    build environment (which would need the network)."""
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return False
    major, minor = (int(x) for x in (version.split(".") + ["0"])[:2])
    if (major, minor) >= (70, 1):  # bdist_wheel is part of setuptools
        return True
    return major >= 64 and importlib.util.find_spec("wheel") is not None


def _run(args, cwd, env, timeout=300) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-3000:])
    return proc


def _ignore(folder, names):
    top = Path(folder) == ROOT
    return [n for n in names if (top and n in NOT_COPIED) or n == "__pycache__" or n.endswith(".egg-info")]


@pytest.mark.slow
def test_installed_wheel_finds_spaces_recipes_and_tables(tmp_path):
    src, wheels, site, elsewhere = (tmp_path / n for n in ("src", "wheels", "site", "elsewhere"))
    shutil.copytree(ROOT, src, ignore=_ignore)
    build_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DNAS_HOME")}
    isolation = ["--no-build-isolation"] if _offline_build() else []
    _run([sys.executable, "-m", "pip", "wheel", src, "--no-deps", *isolation, "-q", "-w", wheels], tmp_path, build_env)
    (wheel,) = wheels.glob("dnas-*.whl")

    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in DATA_FOLDERS:
        for f in (ROOT / folder).iterdir():
            if f.is_file() and f.suffix in (".yaml", ".csv", ".json"):
                assert f"dnas/_data/{folder}/{f.name}" in names, f"{folder}/{f.name} is not in the wheel"
    assert not [n for n in names if n.endswith("ablation.py") or "/results/" in n]

    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", site, wheel],
         tmp_path, build_env)
    elsewhere.mkdir()
    env = dict(build_env, PYTHONPATH=str(site), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")

    code = ("import dnas, dnas.resources as r; print(dnas.__file__); print(r.data_root()); "
            "print(r.find_data_file('search/tiny_synthetic.yaml', 'search', '.yaml').resolve())")
    where = [Path(line) for line in _run([sys.executable, "-c", code], elsewhere, env).stdout.split()]
    assert where[0] == site / "dnas" / "__init__.py"  # not the checkout
    assert where[1] == site / "dnas" / "_data"
    assert where[2] == (site / "dnas" / "_data" / "search" / "tiny_synthetic.yaml").resolve()

    def script(name, *argv):
        return _run([sys.executable, site / "bin" / name, *argv], elsewhere, env)

    out = script("dnas-search", "--supernet", "tiny", "--describe").stdout
    assert "blocks: 6" in out and "max arch:" in out

    script("dnas-search", "--recipe", "tiny_synthetic", "--set", "epochs=1", "--set", "warmup_epochs=0",
           "--set", "max_steps_per_epoch=2", "--set", "eval_max_queries=10", "--no-progress", "--out", "RUN")
    run = elsewhere / "RUN"
    assert (run / "final_arch.yaml").is_file()
    with open(run / "metrics.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["expected_latency_ms"]) > 0  # the recipe's table, found in the package

    out = script("dnas-latency", "show", "latency_tables/cpu_tiny_b8_fp32.csv").stdout
    assert f"table     {site / 'dnas' / '_data' / 'latency_tables' / 'cpu_tiny_b8_fp32.csv'}" in out
    assert "space     tiny" in out
