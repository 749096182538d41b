"""Timing in the runtime a model is deployed with: onnxruntime (CPU, CUDA, TensorRT).

A table's protocol names its runtime (:class:`dnas.latency.timing.TimingConfig`:
``runtime``, ``provider``). With ``eager`` a module runs in PyTorch
(:func:`dnas.latency.timing.measure_module`); with ``onnxruntime`` it is exported to
ONNX (:func:`dnas.export.write_onnx`, opset 17, static shapes at the table's batch and
resolution, fp32, eval mode) and timed in an onnxruntime session:

- session options: every graph optimisation on (``ORT_ENABLE_ALL``: BatchNorm folded
  into the convs, conv + activation and other fusions), ``threads`` intra-op threads
  (``0``: onnxruntime's default), one inter-op thread, sequential execution;
- the input and the outputs are bound once on the provider's device (I/O binding), so a
  call is the graph's run alone, without host-device copies;
- the warm-up, the windows and the median of :func:`dnas.latency.timing.time_windows`
  (``time.perf_counter`` around a run that returns once its outputs are ready).

The provider must be there: ``cuda`` and ``tensorrt`` need an onnxruntime built with
them (``onnxruntime-gpu``) and a GPU; otherwise :func:`check_timing` raises one
:class:`dnas.errors.DnasError` line, and a session that would fall back to another
provider is refused, never timed.

NOTE: FBNet (and the paper) time ops in PyTorch; a deployed Re-ID model runs in a
runtime whose fusions change what each op costs. A table made here is summed per op
like an eager one, and ``dnas-latency validate`` measures how far that sum is from the
whole network exported once and timed in the same session settings.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from dnas.errors import DnasError
from dnas.export import ONNX_OPSET, write_onnx
from dnas.latency.table import PROVIDERS as PROVIDER_NAMES
from dnas.latency.table import RUNTIMES
from dnas.latency.timing import TimingConfig, check_device, measure_module, time_windows

#: ``--provider`` -> onnxruntime's execution provider
PROVIDERS = dict(zip(PROVIDER_NAMES, ("CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider")))
GRAPH_OPTIMIZATION = "ORT_ENABLE_ALL"


def _ort():
    # on use: onnxruntime adds seconds to every command's start-up (as in dnas.export)
    import onnxruntime

    return onnxruntime


def provider_device(provider: str) -> str:
    """The torch device kind a provider runs on: ``cpu`` or ``cuda``."""
    return "cpu" if provider == "cpu" else "cuda"


def resolve_runtime(device: str, runtime: str | None, provider: str | None) -> tuple[str, str, str | None]:
    """``(device, runtime, provider)`` of the options ``--device`` (``auto``: CUDA when
    available), ``--runtime`` (default ``eager``) and ``--provider`` (default: ``cuda``
    with a CUDA device, else ``cpu``); with onnxruntime the provider decides the device.

    Raises:
        DnasError: a provider without onnxruntime, or a device the provider does not run on.
    """
    runtime = runtime or "eager"
    if runtime == "eager":
        if provider:
            raise DnasError(f"--provider {provider} applies to --runtime onnxruntime")
        if device == "auto":
            return ("cuda" if torch.cuda.is_available() else "cpu"), runtime, None
        return device, runtime, None
    provider = provider or ("cuda" if device.startswith("cuda") else "cpu")
    want = provider_device(provider)
    if device == "auto":
        return want, runtime, provider
    if device.split(":")[0] != want:
        raise DnasError(f"--device {device}: --provider {provider} runs on {want}")
    return device, runtime, provider


def table_timing(table, runtime: str | None = None, provider: str | None = None) -> TimingConfig | None:
    """A table's protocol in another runtime or provider (``dnas-latency validate
    --runtime``); ``None`` when neither is given (the table's own protocol)."""
    if runtime is None and provider is None:
        return None
    proto = dict(table.meta.get("protocol") or {})
    runtime = runtime or table.runtime
    if runtime == "eager":
        if provider:
            raise DnasError(f"--provider {provider} applies to --runtime onnxruntime")
        return TimingConfig.from_dict({**proto, "runtime": "eager", "provider": None})
    device = str(proto.get("device") or table.meta.get("device") or "cpu")
    provider = provider or proto.get("provider") or ("cuda" if device.startswith("cuda") else "cpu")
    if device.split(":")[0] != provider_device(provider):  # the machine check then names the difference
        device = provider_device(provider)
    return TimingConfig.from_dict({**proto, "runtime": "onnxruntime", "provider": provider, "device": device})


def check_timing(cfg: TimingConfig) -> torch.device:
    """The device of ``cfg``, checked to be usable with its runtime and provider.

    Raises:
        DnasError: an unknown runtime or provider, settings the runtime does not take, a
            provider this onnxruntime lacks, or the device checks of
            :func:`dnas.latency.timing.check_device`.
    """
    if cfg.runtime not in RUNTIMES:
        raise DnasError(f"runtime {cfg.runtime!r}: expected one of {', '.join(RUNTIMES)}")
    if cfg.runtime == "eager":
        if cfg.provider is not None:
            raise DnasError(f"provider {cfg.provider!r}: a provider applies to runtime onnxruntime, not eager")
        return check_device(cfg)
    if cfg.provider not in PROVIDERS:
        raise DnasError(f"provider {cfg.provider!r}: expected one of {', '.join(PROVIDERS)}")
    if cfg.dtype != "fp32":
        raise DnasError(f"dtype {cfg.dtype} with runtime onnxruntime: only fp32 is supported (the model is "
                        "exported in fp32)")
    if cfg.channels_last:
        raise DnasError("--channels-last applies to runtime eager (onnxruntime lays out tensors itself)")
    if str(cfg.device).split(":")[0] != provider_device(cfg.provider):
        raise DnasError(f"provider {cfg.provider} runs on {provider_device(cfg.provider)}, but the device is "
                        f"{cfg.device!r}")
    ort = _ort()
    name = PROVIDERS[cfg.provider]
    available = ort.get_available_providers()
    if name not in available:
        raise DnasError(f"provider {cfg.provider}: onnxruntime {ort.__version__} on this machine has no {name} "
                        f"(it has {', '.join(available)}); install an onnxruntime built with it "
                        f"({'onnxruntime-gpu' if cfg.provider != 'cpu' else 'onnxruntime'}) where the hardware is")
    return check_device(cfg)


def session_options(cfg: TimingConfig):
    """The onnxruntime ``SessionOptions`` of the protocol (see the module docstring)."""
    ort = _ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, GRAPH_OPTIMIZATION)
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = int(cfg.threads)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # errors only: its warnings about unused initialisers are noise here
    return so


def _providers(cfg: TimingConfig) -> list:
    index = torch.device(cfg.device).index or 0
    if cfg.provider == "cpu":
        return ["CPUExecutionProvider"]
    cuda = ("CUDAExecutionProvider", {"device_id": index})
    if cfg.provider == "cuda":
        return [cuda]
    # TensorRT takes the subgraphs it supports, CUDA the rest (as onnxruntime deploys it)
    return [("TensorrtExecutionProvider", {"device_id": index}), cuda]


def runtime_provenance(cfg: TimingConfig) -> dict:
    """What a table or a report records about the runtime: ``runtime``, and with
    onnxruntime the ``provider`` and an ``onnxruntime`` block (version, execution
    provider, session options, opset)."""
    if cfg.runtime == "eager":
        return {"runtime": "eager"}
    ort = _ort()
    return {"runtime": "onnxruntime", "provider": cfg.provider,
            "onnxruntime": {"version": ort.__version__, "execution_provider": PROVIDERS[cfg.provider],
                            "intra_op_num_threads": int(cfg.threads), "inter_op_num_threads": 1,
                            "graph_optimization_level": GRAPH_OPTIMIZATION, "execution_mode": "ORT_SEQUENTIAL",
                            "io_binding": True, "opset": ONNX_OPSET, "dtype": "fp32", "static_shapes": True}}


def runtime_mode(cfg: TimingConfig) -> str:
    """The ``mode`` line of a table or a report: what one number is the time of."""
    if cfg.runtime == "eager":
        return "eval (inference latency, torch.no_grad, BN not fused)"
    return (f"eval, exported to ONNX (opset {ONNX_OPSET}, static shapes) and run in onnxruntime "
            f"({PROVIDERS[cfg.provider]}, {GRAPH_OPTIMIZATION}: BN folded, ops fused)")


def export_for_timing(module: nn.Module, input_shape: Sequence[int], cfg: TimingConfig, path: Path) -> Path:
    """Export ``module`` in eval mode, on the CPU, in fp32, for an input ``(cfg.batch, *input_shape)``."""
    module = module.eval().to(device="cpu", dtype=torch.float32)
    example = torch.randn(cfg.batch, *input_shape)
    try:
        with torch.no_grad():
            return write_onnx(module, example, Path(path), ["input"])
    except Exception as exc:  # noqa: BLE001 - both exporters failed: one line naming the module
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DnasError(f"exporting {type(module).__name__} to ONNX for timing failed: {first}") from None


def measure_onnx_file(path: Path, input_shape: Sequence[int], cfg: TimingConfig) -> float:
    """Milliseconds per run of the ONNX model at ``path`` in a fresh session (the protocol of
    the module docstring), for an input ``(cfg.batch, *input_shape)``.

    Raises:
        DnasError: the session cannot be made, or it does not run on the requested provider.
    """
    ort = _ort()
    try:
        session = ort.InferenceSession(str(path), session_options(cfg), providers=_providers(cfg))
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DnasError(f"onnxruntime ({PROVIDERS[cfg.provider]}) could not load {Path(path).name}: {first}") from None
    used = session.get_providers()
    if not used or used[0] != PROVIDERS[cfg.provider]:
        raise DnasError(f"onnxruntime ran {Path(path).name} on {', '.join(used) or 'nothing'}, not "
                        f"{PROVIDERS[cfg.provider]}: refusing to time a fallback")
    where = provider_device(cfg.provider)
    index = torch.device(cfg.device).index or 0
    x = np.random.default_rng(0).standard_normal((cfg.batch, *input_shape), dtype=np.float32)
    binding = session.io_binding()
    binding.bind_ortvalue_input(session.get_inputs()[0].name, ort.OrtValue.ortvalue_from_numpy(x, where, index))
    for out in session.get_outputs():
        binding.bind_output(out.name, where, index)

    def run() -> None:
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()

    return time_windows(run, cfg)


class ExportedModels:
    """ONNX files of modules exported once for timing, in a temporary directory (removed by
    :meth:`close` or at the end of a ``with`` block)."""

    def __init__(self):
        self._dir = tempfile.TemporaryDirectory(prefix="dnas-ort-")
        self._paths: dict[str, Path] = {}

    def path(self, name: str, build, input_shape: Sequence[int], cfg: TimingConfig) -> Path:
        """The file of ``name``, exported from ``build()`` on first use."""
        if name not in self._paths:
            target = Path(self._dir.name) / f"{len(self._paths):06d}.onnx"
            self._paths[name] = export_for_timing(build(), input_shape, cfg, target)
        return self._paths[name]

    def close(self) -> None:
        self._dir.cleanup()

    def __enter__(self) -> "ExportedModels":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def measure_in_runtime(module: nn.Module, input_shape: Sequence[int], cfg: TimingConfig,
                       onnx_path: Path | None = None) -> float:
    """Milliseconds per forward of ``module`` in ``cfg``'s runtime.

    Args:
        module: any module taking one tensor (built on ``cfg.device`` for eager).
        input_shape: per-sample input shape (the batch is ``cfg.batch``).
        cfg: the protocol, runtime included.
        onnx_path: with onnxruntime, ``module`` exported already (by :class:`ExportedModels`);
            otherwise it is exported into a temporary file and timed.

    Returns:
        The median window in ms per forward.
    """
    if cfg.runtime == "eager":
        return measure_module(module, input_shape, cfg)
    if onnx_path is not None:
        return measure_onnx_file(onnx_path, input_shape, cfg)
    with tempfile.TemporaryDirectory(prefix="dnas-ort-") as tmp:
        path = export_for_timing(module, input_shape, cfg, Path(tmp) / "module.onnx")
        return measure_onnx_file(path, input_shape, cfg)


__all__ = ["ExportedModels", "PROVIDERS", "RUNTIMES", "check_timing", "export_for_timing", "measure_in_runtime",
           "measure_onnx_file", "provider_device", "resolve_runtime", "runtime_mode", "runtime_provenance",
           "session_options", "table_timing"]
