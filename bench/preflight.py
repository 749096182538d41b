"""``python -m bench.preflight``: what the device run stands on, before it spends time.

Prints the date, ``nvidia-smi``'s view of the GPU, Python and the versions of the
modules dnas and the benchmarks import (``MISSING`` where one does not import),
``torch.cuda`` (available, device name, capability, memory, cuDNN, bf16 support),
onnxruntime's providers, then runs one tiny op on the device (a bf16 matrix product
and a channels_last convolution on CUDA, fp32 on CPU), synchronised and checked
against the CPU result. Exit status 1 when ``--device cuda`` is asked for and CUDA or
the tiny op does not work, so the device run stops before its budget goes on errors.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import os
import platform
import shutil
import subprocess
import sys
import time

MODULES = ("torch", "torchvision", "numpy", "yaml", "tqdm", "PIL", "matplotlib", "pandas", "onnx", "onnxruntime",
           "timm", "fvcore", "pytorch_grad_cam", "sklearn", "networkx", "tensorboard", "pytest")


def _nvidia_smi() -> str:
    if not shutil.which("nvidia-smi"):
        return "nvidia-smi: not found"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,memory.used,clocks.max.sm,"
                              "temperature.gpu,power.limit", "--format=csv"], capture_output=True, text=True,
                             timeout=20, check=False)
        return (out.stdout or out.stderr).strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"nvidia-smi: {exc}"


def tiny_op(device: str) -> str:
    """Run a matrix product and a convolution on ``device``; raise when the result is wrong."""
    import torch

    dev = torch.device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(256, 256, generator=gen), torch.randn(256, 256, generator=gen)
    x, w = torch.randn(8, 16, 32, 16, generator=gen), torch.randn(32, 16, 3, 3, generator=gen)
    t0 = time.perf_counter()
    prod = (a.to(dev, dtype) @ b.to(dev, dtype)).float().cpu()
    xd = x.to(dev, dtype)
    if dev.type == "cuda":
        xd = xd.contiguous(memory_format=torch.channels_last)
    conv = torch.nn.functional.conv2d(xd, w.to(dev, dtype), padding=1).float().cpu()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    ms = (time.perf_counter() - t0) * 1e3
    tol = 0.05 if dtype == torch.bfloat16 else 1e-4
    err_mm = float(((prod - a @ b).abs().max() / (a @ b).abs().max()))
    ref = torch.nn.functional.conv2d(x, w, padding=1)
    err_conv = float(((conv - ref).abs().max() / ref.abs().max()))
    if not (err_mm < tol and err_conv < tol):
        raise RuntimeError(f"tiny op on {device} is wrong: relative error matmul {err_mm:.3g}, conv {err_conv:.3g}")
    return f"tiny op on {device} ({str(dtype).split('.')[-1]}): ok in {ms:.1f} ms (rel. err. matmul {err_mm:.2g}, " \
           f"conv {err_conv:.2g})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.preflight", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default; exit 1 without it) or cpu")
    args = p.parse_args(argv)
    print(f"date {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}  host {platform.node()}  "
          f"cpus {os.cpu_count()}")
    print(_nvidia_smi())
    print("python", sys.version.split()[0], sys.executable)
    for name in MODULES:
        try:
            mod = importlib.import_module(name)
            print(f"{name:17s} {getattr(mod, '__version__', 'ok')}")
        except Exception as exc:  # noqa: BLE001 - any import failure is what preflight reports
            print(f"{name:17s} MISSING ({type(exc).__name__}: {str(exc)[:120]})")
    import torch

    print(f"torch.cuda        available {torch.cuda.is_available()}, CUDA {torch.version.cuda}, "
          f"cuDNN {torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else 'none'}")
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        print(f"device 0          {props.name}, capability {props.major}.{props.minor}, "
              f"{props.total_memory / 2**30:.1f} GiB, {props.multi_processor_count} SMs, "
              f"bf16 {torch.cuda.is_bf16_supported()}")
    try:
        import onnxruntime as ort

        print("onnxruntime       providers", ort.get_available_providers())
    except Exception:  # noqa: BLE001
        pass
    usage = shutil.disk_usage(".")
    print(f"disk              {usage.free / 2**30:.1f} GiB free of {usage.total / 2**30:.1f} GiB")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("preflight: CUDA is not available: the device run stops here")
        return 1
    try:
        print(tiny_op(args.device))
    except Exception as exc:  # noqa: BLE001 - the run must stop on any failure of the device
        print(f"preflight: the tiny op failed on {args.device}: {type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
