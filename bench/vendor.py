"""``python -m bench.vendor``: copy the pure-Python dependencies the GPU machine's image
lacks into ``bench/vendor/`` (ignored by git), for the device run to carry.

The device image has torch, timm, onnxruntime, scikit-learn, pytest and most of what
dnas needs, but not fvcore (the MACs counts of ``dnas.model_stats.count_macs``, used by the
``dcs`` benchmark) with its helpers iopath, yacs and termcolor, nor grad-cam
(``pytorch_grad_cam``, imported by some test modules) with ttach. All of them are pure
Python, so the installed copies of this environment work there as they are;
``bench/device_run.sh`` puts ``bench/vendor`` on ``PYTHONPATH`` when it is there. Pass
``carry: ["bench/vendor"]`` with the call (see bench/README.md).
"""
from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
from pathlib import Path

PACKAGES = ("fvcore", "iopath", "yacs", "termcolor", "pytorch_grad_cam", "ttach")
DEFAULT_OUT = Path(__file__).resolve().parent / "vendor"


def vendor(out: Path, packages=PACKAGES) -> list[str]:
    """Copy each installed package (its folder, without ``__pycache__``) into ``out``.

    Returns:
        One line per package: where it came from, or why it was left out.
    """
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for name in packages:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            lines.append(f"{name}: not installed here as a package folder; left out")
            continue
        src = Path(list(spec.submodule_search_locations)[0])
        dst = out / name
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        lines.append(f"{name}: {src} -> {dst}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.vendor", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="target folder (default bench/vendor)")
    args = p.parse_args(argv)
    for line in vendor(args.out):
        print(line)
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"{args.out}: {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
