"""Derived-net benchmarks against other builders and runtimes: dnas vs timm's
EfficientNet builder (training and inference throughput), and ONNX Runtime (GPU
provider when installed) vs PyTorch eager inference.
"""
from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from bench.arch_tools import timm_efficientnet, widest_arch
from bench.common import BenchSettings, free_memory, prepare_model, ratio, reid_batch, sync, time_step
from bench.report import check, result
from bench.steps import build_ce_step, build_infer_step
from dnas.models import PlainNet
from dnas.space import load_space


def bench_timm(space_name: str, settings: BenchSettings) -> dict:
    """Throughput of our PlainNet vs the same arch built by timm (no DCS, no BNNeck)."""
    space = load_space(space_name)
    key, title = f"timm/{space.name}", f"{space.name} widest derived net vs timm EfficientNet builder"
    arch = widest_arch(space, num_classes=settings.num_classes, attention="none", bnneck=False)
    timm_net = timm_efficientnet(arch, settings.num_classes)
    x, labels = reid_batch(settings, space)
    figs = {}
    for name, build in (("dnas", lambda: PlainNet(arch)), ("timm", lambda: timm_net)):
        net = prepare_model(build(), settings)
        figs[f"{name}_params"] = sum(p.numel() for p in net.parameters())
        train = time_step(build_ce_step(net, settings, x, labels), settings)
        infer = time_step(build_infer_step(net, settings, x), settings)
        figs[f"{name}_train_ms"], figs[f"{name}_infer_ms"] = train["median_ms"], infer["median_ms"]
        figs[f"{name}_train_img_s"] = settings.batch / train["median_ms"] * 1e3
        figs[f"{name}_infer_img_s"] = settings.batch / infer["median_ms"] * 1e3
        del net
        free_memory(settings.device)
    timm_net = None
    figs["train_throughput_ratio"] = ratio(figs["dnas_train_img_s"], figs["timm_train_img_s"])
    figs["infer_throughput_ratio"] = ratio(figs["dnas_infer_img_s"], figs["timm_infer_img_s"])
    checks = [check("training throughput dnas / timm", figs["train_throughput_ratio"], ">=", 0.95, "x"),
              check("inference throughput dnas / timm", figs["infer_throughput_ratio"], ">=", 0.95, "x")]
    notes = ["CE step (logits only) and inference; both nets without DCS-Attention and BNNeck",
             "same parameter count" if figs["dnas_params"] == figs["timm_params"] else
             f"parameter counts differ: dnas {figs['dnas_params']}, timm {figs['timm_params']}"]
    return result(key, title, figs, checks, notes)


def _ort_session(path: Path, settings: BenchSettings, tensorrt: bool):
    """An onnxruntime session on the best provider for the device, or ``(None, why)``."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if settings.is_cuda:
        wanted = ([("TensorrtExecutionProvider", {"trt_bf16_enable": False})] if tensorrt else []) + \
                 ["CUDAExecutionProvider"]
        wanted = [p for p in wanted if (p[0] if isinstance(p, tuple) else p) in available]
        if not wanted:
            return None, f"no GPU provider in onnxruntime {ort.__version__} (available: {', '.join(available)}); " \
                         "install onnxruntime-gpu to compare"
    else:
        wanted = ["CPUExecutionProvider"]
    fallback = [] if "CPUExecutionProvider" in wanted else ["CPUExecutionProvider"]
    sess = ort.InferenceSession(str(path), providers=wanted + fallback)
    return sess, None


def _ort_runner(sess, x: torch.Tensor, cuda: bool):
    """A call that runs ``sess`` on ``x`` with inputs and outputs left on the device."""
    import numpy as np

    if not cuda:
        arr = x.numpy()
        return lambda: sess.run(None, {"images": arr})
    binding = sess.io_binding()
    binding.bind_input("images", "cuda", 0, np.float32, list(x.shape), x.data_ptr())
    for name in ("logits", "embedding"):
        binding.bind_output(name, "cuda")
    return lambda: sess.run_with_iobinding(binding)


def bench_onnx(space_name: str, settings: BenchSettings, tensorrt: bool = False) -> dict:
    """The widest derived net (with DCS-Attention) through onnxruntime vs PyTorch eager."""
    from dnas.export import export_onnx

    space = load_space(space_name)
    key, title = f"onnx/{space.name}", f"{space.name} widest derived net, onnxruntime vs eager inference"
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return result(key, title, status="skipped", notes=["onnxruntime is not installed"])
    arch = widest_arch(space, num_classes=settings.num_classes)
    net = PlainNet(arch).eval()
    h, w = settings.resolution(space)
    x, _ = reid_batch(settings, space)
    x = x.contiguous()  # NCHW for onnxruntime
    figs, notes = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        t0 = time.perf_counter()
        figs["export_max_abs_diff_cpu"] = export_onnx(net, [3, h, w], path)
        figs["export_s"] = time.perf_counter() - t0
        figs["onnx_mib"] = path.stat().st_size / 2**20
        sess, why = _ort_session(path, settings, tensorrt)
        if sess is not None:
            figs["provider"] = sess.get_providers()[0]
            t0 = time.perf_counter()
            run = _ort_runner(sess, x, settings.is_cuda)
            run()
            figs["session_first_run_s"] = time.perf_counter() - t0
            wall = dataclasses.replace(settings, device="cpu")  # onnxruntime returns when done: wall clock
            sync(settings.device)
            figs["ort_ms"] = time_step(run, wall)["median_ms"]
            del sess, run
        else:
            notes.append(why)
    net = prepare_model(net, settings).eval()
    fp32 = dataclasses.replace(settings, amp=False)
    figs["eager_fp32_ms"] = time_step(build_infer_step(net, fp32, x), fp32)["median_ms"]
    if settings.use_amp:
        figs["eager_bf16_ms"] = time_step(build_infer_step(net, settings, x), settings)["median_ms"]
    del net
    free_memory(settings.device)
    checks = []
    if "ort_ms" in figs:
        figs["ort_vs_eager_fp32_time"] = ratio(figs["ort_ms"], figs["eager_fp32_ms"])
        checks.append(check(f"{figs['provider']} fp32 time / eager fp32 time", figs["ort_vs_eager_fp32_time"],
                            "report", None, "x"))
        if "eager_bf16_ms" in figs:
            figs["ort_vs_eager_bf16_time"] = ratio(figs["ort_ms"], figs["eager_bf16_ms"])
            checks.append(check(f"{figs['provider']} fp32 time / eager bf16 time", figs["ort_vs_eager_bf16_time"],
                                "report", None, "x"))
    checks.append(check("eager inference, fp32, ms per batch", figs["eager_fp32_ms"], "report", None, " ms"))
    notes.append(f"batch {settings.batch}, {h}x{w}; the ONNX model is fp32 (opset 17, dnas.export.export_onnx)")
    return result(key, title, figs, checks, notes)
