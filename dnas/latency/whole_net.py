"""``dnas-latency time-net``: the latency of one whole fixed network, no table needed.

The measured counterpart of a table sum (docs/method.md section 5, the LAT term): the
network an arch file or a ``dnas-derive`` directory describes (anything
:func:`dnas.build_model` takes, or :func:`dnas.load_derived` for a directory with its
weights) is timed with the protocol of the tables and of ``dnas-latency validate``
(:mod:`dnas.latency.timing`: eval mode, ``torch.no_grad``, CUDA graphs on CUDA, eager
windows on CPU; or, with runtime ``onnxruntime``, the network exported to ONNX once and
run in one onnxruntime session, :mod:`dnas.latency.onnx_timing`), in ``passes`` passes;
the figure is the median over the passes of the median window, with the same ``spread``
((max - min) / median) a table row carries.
"""
from __future__ import annotations

import copy
import datetime as _dt
from pathlib import Path
from typing import Sequence

import torch

from dnas.architectures import build_model, load_derived
from dnas.errors import DnasError
from dnas.latency.onnx_timing import (ExportedModels, check_timing, measure_in_runtime, runtime_mode,
                                      runtime_provenance)
from dnas.latency.timing import TimingConfig, device_info, round_robin, summarize
from dnas.latency.validate import check_machine


def load_fixed_net(arch) -> tuple[torch.nn.Module, str]:
    """``(model, how)``: a ``dnas-derive`` directory with its weights (``model.pt``), or a
    fresh network of an arch file (weights do not change the latency)."""
    path = Path(arch)
    if path.is_dir() and (path / "model.pt").is_file():
        return load_derived(path), "dnas-derive directory (weights loaded)"
    return build_model(arch), "architecture file (fresh weights)"


def net_input_shape(model: torch.nn.Module, size: Sequence[int] | None = None) -> tuple[int, int, int]:
    """``(C, H, W)`` of one input image: the arch's ``input_size``, ``size = (H, W)``
    replacing its resolution (either may be ``None``: keep the arch's).

    Raises:
        DnasError: the model does not say its input size and ``size`` is not complete.
    """
    arch = getattr(model, "arch", None)
    shape = getattr(model, "input_size", None) or getattr(arch, "input_size", None)
    shape = list(shape) if shape else [3, None, None]
    if size is not None:
        shape[1:] = [s if s is not None else old for s, old in zip(size, shape[1:])]
    if any(v is None for v in shape):
        raise DnasError(f"{type(model).__name__}: the network does not give its input size; pass --height and --width")
    return tuple(int(v) for v in shape)


def time_net(arch, cfg: TimingConfig, passes: int = 3, size: Sequence[int] | None = None, progress: bool = False
             ) -> dict:
    """Time one whole network's forward pass.

    Args:
        arch: an arch/backbone YAML path, a ``dnas-derive`` directory, or anything
            :func:`dnas.build_model` takes.
        cfg: the measurement protocol (device, dtype, batch, windows, ...).
        passes: timing passes (median and spread over them).
        size: ``(H, W)`` replacing the arch's resolution (``None`` in either place: keep it).
        progress: progress bar over the passes (only on a terminal).

    Returns:
        A dict with ``ms`` (median over passes, per batch), ``spread``, ``pass_ms``,
        ``samples``, ``images_per_s``, the protocol and the device.
    """
    check_timing(cfg)
    if passes < 1:
        raise DnasError(f"passes {passes}: expected >= 1")
    model, how = load_fixed_net(arch)
    shape = net_input_shape(model, size)
    return time_model(model, shape, cfg, passes, progress, {"arch": str(arch), "loaded_as": how})


def time_model(model: torch.nn.Module, shape: Sequence[int], cfg: TimingConfig, passes: int = 3,
               progress: bool = False, about: dict | None = None) -> dict:
    """Time a built network's forward pass (:func:`time_net` after loading; ``dnas-derive``
    on the net it exports). With onnxruntime the network is exported once and every pass
    times it in a fresh session.

    Args:
        model: the network (eval mode is set here).
        shape: ``(C, H, W)`` of one input image.
        cfg: the measurement protocol, checked by the caller (:func:`check_timing`).
        passes: timing passes (median and spread over them).
        progress: progress bar over the passes (only on a terminal).
        about: keys put first in the report (``arch``, ``loaded_as``).

    Returns:
        The report of :func:`time_net`.
    """
    name = (about or {}).get("arch", type(model).__name__)

    with ExportedModels() as exported:
        def measure(_key: str) -> float:
            try:
                if cfg.runtime == "eager":
                    return measure_in_runtime(model, shape, cfg)
                return measure_in_runtime(None, shape, cfg, onnx_path=exported.path("net", lambda: model, shape, cfg))
            except RuntimeError as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise DnasError(f"timing {name} on {cfg.device} ({cfg.dtype}, batch {cfg.batch}, {cfg.method}) "
                                f"failed: {first}") from None

        samples = round_robin(["net"], measure, passes, desc="time-net", progress=progress, unit="pass")["net"]
    ms, spread = summarize(samples)
    info = device_info(cfg)
    return {"arch": name, "loaded_as": (about or {}).get("loaded_as", "built network"),
            "network": type(model).__name__,
            "params": sum(p.numel() for p in model.parameters()), "input_size": list(shape),
            "ms": ms, "spread": spread, "pass_ms": samples, "samples": len(samples),
            "images_per_s": cfg.batch / ms * 1e3 if ms > 0 else None,
            "device": cfg.device, "device_name": info["device_name"], "method": cfg.method,
            "protocol": {**cfg.to_dict(), "passes": passes}, "torch": info["torch"], "cuda": info["cuda"],
            **runtime_provenance(cfg), "mode": runtime_mode(cfg),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def deployed_net(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of a derived :class:`dnas.models.PlainNet` that stops at the pooled feature:
    no BNNeck, no classifier, as the search's cost counts it (the ``classifier`` entry,
    BNNeck included, is left out of a Re-ID search's latency)."""
    net = copy.deepcopy(model)
    net.head.neck, net.head.classifier = None, torch.nn.Identity()
    return net.eval()


def measured_latency_summary(model: torch.nn.Module, table, shape: Sequence[int]) -> dict:
    """The ``summary.json`` keys of a derived net's measured latency under ``table``'s
    protocol, runtime included (:func:`deployed_net` of ``model`` is timed), when the
    table's device and runtime are this machine's.

    Returns:
        ``{"measured_latency_ms": ms, "measured_latency": {how: method, runtime, device,
        batch, passes, spread, ...}}``, or ``{"measured_latency_skipped": why not}`` when
        the table was profiled on another device or its runtime or provider is not here.
    """
    proto = dict(table.meta.get("protocol") or {})
    cfg = TimingConfig.from_dict(proto)
    try:
        check_timing(cfg)
        check_machine(table, cfg)
    except DnasError as exc:
        return {"measured_latency_skipped": str(exc)}
    name = getattr(getattr(model, "arch", None), "name", None) or type(model).__name__
    report = time_model(deployed_net(model), shape, cfg, int(proto.get("passes") or 3), about={"arch": name})
    keep = ("method", "device", "device_name", "runtime", "provider", "onnxruntime", "spread", "pass_ms", "mode",
            "date")
    return {"measured_latency_ms": report["ms"],
            "measured_latency": {"table": table.source, **{k: report[k] for k in keep if k in report},
                                 "protocol": report["protocol"],
                                 "covers": "the network up to the pooled feature (no BNNeck, no classifier), as the "
                                           "table latency"}}


def format_net_timing(report: dict) -> str:
    """Readable lines of a :func:`time_net` report."""
    p = report["protocol"]
    return "\n".join([
        f"network   {report['arch']} ({report['network']}, {report['params']:,} parameters, {report['loaded_as']})",
        f"device    {report['device_name']} ({report['device']}), torch {report['torch']}, CUDA {report['cuda']}"
        + (f", onnxruntime {report['onnxruntime']['version']} ({report['onnxruntime']['execution_provider']})"
           if report.get("runtime") == "onnxruntime" else ""),
        f"settings  batch {p['batch']}, {p['dtype']}, input {'x'.join(map(str, report['input_size']))}, "
        f"channels_last {p['channels_last']}, method {report['method']}, {p['passes']} passes x {p['windows']} "
        f"windows of {p['window_ms']:g} ms, threads {p['threads']}",
        f"latency   {report['ms']:.4g} ms per batch of {p['batch']} (median over passes; spread "
        f"{100 * report['spread']:.1f}%; passes {' '.join(f'{v:.4g}' for v in report['pass_ms'])} ms), "
        f"{report['images_per_s']:.1f} images/s"])


__all__ = ["deployed_net", "format_net_timing", "load_fixed_net", "measured_latency_summary", "net_input_shape",
           "time_model", "time_net"]
