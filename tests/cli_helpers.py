"""Helpers of the bad-input and overwrite-safety tests: run a console script as a real
subprocess, check the README's error promise (one line naming the thing, exit status 2,
no traceback), and build small fixtures (a search run, a derived net, a reid run)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEARCH_FAST = ["--recipe", str(ROOT / "search/tiny_synthetic.yaml"), "--set", "epochs=1", "--set", "warmup_epochs=0",
               "--set", "max_steps_per_epoch=2", "--set", "eval_max_queries=10", "--set", "latency_table=none",
               "--no-progress"]
RETRAIN_FAST = ["--set", "epochs=1", "--set", "warmup_epochs=0", "--set", "max_steps_per_epoch=2",
                "--set", "eval_max_queries=10", "--set", "export_onnx=false", "--no-progress"]
MODULES = {"dnas-search": "dnas.cli.search", "dnas-derive": "dnas.cli.derive", "dnas-retrain": "dnas.cli.retrain",
           "dnas-latency": "dnas.cli.latency"}


def env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def cli(prog: str, *argv, cwd=None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``prog`` (``dnas-derive`` ...) as ``python -m`` in a subprocess."""
    return subprocess.run([sys.executable, "-m", MODULES[prog], *map(str, argv)], cwd=cwd, env=env(),
                          capture_output=True, text=True, timeout=timeout)


def py(code: str, cwd=None) -> subprocess.CompletedProcess:
    """Run Python code in a subprocess (the API cases)."""
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env(), capture_output=True, text=True,
                          timeout=300)


def one_line_error(proc: subprocess.CompletedProcess, prog: str, *fragments: str) -> str:
    """Assert exit status 2, no traceback and exactly one ``PROG: error:`` line holding ``fragments``."""
    err = proc.stderr
    assert proc.returncode == 2, (proc.returncode, err[-2000:])
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith(f"{prog}: error:")]
    assert len(lines) == 1, err[-3000:]
    line = lines[0]
    assert len(line) < 700, line
    for f in fragments:
        assert f in line, line
    return line


def leftovers(folder: Path) -> list[str]:
    """Hidden temporary names a failed atomic write could leave in ``folder``."""
    return sorted(p.name for p in Path(folder).iterdir() if p.name.endswith((".tmp", ".old")))


def make_search_run(out: Path, *extra) -> Path:
    """A one-epoch tiny search run (in-process: it is a fixture, not a case)."""
    from dnas.cli import search as search_cli

    assert search_cli.main([*SEARCH_FAST, "--out", str(out), *extra]) == 0
    return out


def make_derived(out: Path) -> Path:
    from dnas.cli import derive as derive_cli

    assert derive_cli.main(["--supernet", "tiny", "--sample", "max", "--no-onnx", "--out", str(out)]) == 0
    return out


def make_reid_run(arch: Path, out: Path) -> Path:
    from dnas.cli import retrain as retrain_cli

    assert retrain_cli.main(["reid", "--arch", str(arch), "--data", "synthetic", "--out", str(out),
                             *RETRAIN_FAST]) == 0
    return out


def _fixture():
    import pytest

    @pytest.fixture(scope="module")
    def runs(tmp_path_factory):
        """``{"search", "derived", "reid"}``: a tiny search run, a derived net and a reid run."""
        mp = pytest.MonkeyPatch()
        mp.setenv("DNAS_CACHE", str(tmp_path_factory.getbasetemp() / "dnas-cache"))
        try:
            base = tmp_path_factory.mktemp("runs")
            derived = make_derived(base / "derived")
            out = {"search": make_search_run(base / "search"), "derived": derived,
                   "reid": make_reid_run(derived, base / "reid")}
        finally:
            mp.undo()
        return out

    return runs


runs = _fixture()


def kill_mid_run(args: list[str], out: Path, env_vars: dict, step: int = 6, timeout: float = 120) -> None:
    """Start ``args + ['--set', 'checkpoint_every=1', '--out', out]`` as a subprocess and
    SIGKILL it once its last checkpoint has passed ``step`` optimizer steps."""
    import signal
    import time

    import torch

    proc = subprocess.Popen(args + ["--set", "checkpoint_every=1", "--out", str(out)], env=env_vars,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        ckpt = Path(out) / "checkpoint-last.pt"
        try:
            if ckpt.exists() and torch.load(ckpt, weights_only=True)["step"] >= step:
                break
        except Exception:  # noqa: BLE001 - never half-written, but may vanish mid-rename
            pass
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
