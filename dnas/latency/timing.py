"""The latency measurement protocol shared by the profiler and validation.

What a number in a table means: the steady-state time of one forward pass of the
module in **eval mode** (inference latency: BatchNorm uses running statistics,
DCS-Attention uses its deterministic mask ``M = [pi > 0]``) under ``torch.no_grad``,
at the table's batch, dtype and memory format, BatchNorm not fused into the convs (the
derived nets are measured the same way).

CUDA (method ``cuda-graph``): eager warm-up on a side stream, then the module is
captured in a CUDA graph, repeated ``inner`` times inside the graph so that one replay
lasts at least ``min_replay_ms``; the replay launch overhead (a few microseconds, paid
once per graph, not per op) is so amortised away, and per-op sums add up the way the
kernels of a whole-network graph do. Then ``windows`` timing windows of ``n`` replays
each, timed with CUDA events; the result is the median window time per forward.
Whole networks (``dnas-latency validate``) go through the same function, so the
per-replay launch overhead is excluded on both sides of the comparison.

CPU (method ``eager``): the same warm-up and windows in eager mode, timed with
``time.perf_counter``, with ``threads`` intra-op threads (default 1: multi-threaded
timings of small ops on a shared machine are dominated by thread wake-ups and by other
processes; one thread gave per-entry spreads of ~1% instead of ~100% on a 2-core VM).

Entries are measured in shuffled round-robin passes (:func:`round_robin`): every pass
visits all entries in a fresh random order and contributes one median per entry; the
final value is the median over passes, so slow clock drift (thermal, boost) spreads
over all entries instead of biasing one region of the table.

Runtime ``onnxruntime`` (:mod:`dnas.latency.onnx_timing`): the module is exported to
ONNX and timed in an onnxruntime session with the same warm-up and windows
(:func:`time_windows`); ``runtime`` and ``provider`` are fields of the protocol, left out
of an eager table's metadata, so that tables written before they existed read as eager.

NOTE: FBNet/FBNetV2 time each op in isolation in eager mode; that is known not to add
up (launch overhead), hence the CUDA-graph protocol here.
"""
from __future__ import annotations

import contextlib
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from dnas.errors import DnasError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class TimingConfig:
    """Protocol settings (stored in a table's metadata; validation reuses them).

    Attributes:
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: ``fp32``, ``fp16`` or ``bf16``.
        batch: batch size of the inputs.
        channels_last: NHWC memory format for 4-D inputs and modules.
        warmup: eager warm-up calls (and graph replays before timing).
        windows: timing windows per measurement (median taken).
        window_ms: target length of one window (default: 2 ms on CUDA, 5 ms on CPU).
        min_replay_ms: CUDA: repeat the module inside the graph until one replay lasts
            at least this long.
        max_inner: CUDA: at most this many repeats inside one graph.
        threads: CPU: intra-op threads while measuring (``0``: leave torch's setting); with
            onnxruntime, the session's intra-op threads (``0``: onnxruntime's default).
        runtime: ``eager`` (PyTorch; CUDA graphs on CUDA) or ``onnxruntime``.
        provider: onnxruntime's execution provider: ``cpu``, ``cuda`` or ``tensorrt``
            (``None`` with ``eager``).
    """

    device: str = "cpu"
    dtype: str = "fp32"
    batch: int = 1
    channels_last: bool = False
    warmup: int = 3
    windows: int = 7
    window_ms: float | None = None
    min_replay_ms: float = 0.2
    max_inner: int = 32
    threads: int = 1
    runtime: str = "eager"
    provider: str | None = None

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def method(self) -> str:
        if self.runtime == "onnxruntime":
            return f"onnxruntime-{self.provider}"
        return "cuda-graph" if self.is_cuda else "eager"

    @property
    def target_window_ms(self) -> float:
        return self.window_ms if self.window_ms is not None else (2.0 if self.is_cuda else 5.0)

    def to_dict(self) -> dict:
        out = {**asdict(self), "method": self.method, "window_ms": self.target_window_ms}
        if self.runtime == "eager":  # as tables were written before runtimes existed
            del out["runtime"], out["provider"]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "TimingConfig":
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in names})


def check_device(cfg: TimingConfig) -> torch.device:
    """The torch device of ``cfg``, checked to be usable.

    Raises:
        DnasError: unknown dtype, or CUDA requested but not available.
    """
    if cfg.dtype not in DTYPES:
        raise DnasError(f"dtype {cfg.dtype!r}: expected one of {', '.join(DTYPES)}")
    if cfg.batch < 1:
        raise DnasError(f"batch {cfg.batch}: expected >= 1")
    try:
        dev = torch.device(cfg.device)
    except RuntimeError:
        raise DnasError(f"device {cfg.device!r}: expected cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DnasError(f"device {cfg.device!r}: CUDA is not available on this machine")
    if dev.type not in ("cpu", "cuda"):
        raise DnasError(f"device {cfg.device!r}: expected cpu, cuda or cuda:N")
    return dev


def _prepare(module: nn.Module, input_shape: Sequence[int], cfg: TimingConfig) -> tuple[nn.Module, torch.Tensor]:
    dev, dtype = torch.device(cfg.device), DTYPES[cfg.dtype]
    module = module.eval().to(device=dev, dtype=dtype)
    x = torch.randn(cfg.batch, *input_shape, device=dev, dtype=dtype)
    if cfg.channels_last and x.dim() == 4:
        module = module.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    return module, x


def measure_module(module: nn.Module, input_shape: Sequence[int], cfg: TimingConfig) -> float:
    """Median time of one forward pass in ms (see the module docstring for the protocol).

    Args:
        module: any module taking one tensor; moved to the device/dtype and put in eval mode.
        input_shape: per-sample input shape (the batch is ``cfg.batch``).
        cfg: protocol settings.

    Returns:
        Milliseconds per forward (median over the windows).
    """
    module, x = _prepare(module, input_shape, cfg)
    with torch.no_grad():
        if cfg.is_cuda:
            return _measure_cuda(lambda: module(x), x.device, cfg)
        with cpu_threads(cfg.threads):
            return time_windows(lambda: module(x), cfg)


@contextlib.contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """Run with ``n`` intra-op threads (``0``: unchanged), restoring the old count after."""
    old = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def time_windows(fn: Callable[[], object], cfg: TimingConfig) -> float:
    """Milliseconds per call of ``fn``, which returns when its work is done: ``cfg.warmup``
    calls (the fastest sets the window length ``n``), then ``cfg.windows`` windows of
    ``n`` calls timed with ``time.perf_counter``; the median window per call."""
    single = math.inf
    for _ in range(max(1, cfg.warmup)):
        t0 = time.perf_counter()
        fn()
        single = min(single, (time.perf_counter() - t0) * 1e3)
    n = int(min(100_000, max(1, math.ceil(cfg.target_window_ms / max(single, 1e-4)))))
    samples = []
    for _ in range(cfg.windows):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - t0) * 1e3 / n)
    return statistics.median(samples)


def _capture(fn: Callable[[], object], inner: int) -> "torch.cuda.CUDAGraph":
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(inner):
            fn()  # outputs are dropped: the graph's pool reuses their memory
    return graph


def _time_replays(graph, n: int, dev: torch.device) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    stream = torch.cuda.current_stream(dev)
    start.record(stream)
    for _ in range(n):
        graph.replay()
    end.record(stream)
    end.synchronize()
    return start.elapsed_time(end) / n  # ms per replay


def _measure_cuda(fn: Callable[[], object], dev: torch.device, cfg: TimingConfig) -> float:  # pragma: no cover - GPU
    with torch.cuda.device(dev):
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):  # warm-up off the default stream, as graph capture requires
            for _ in range(max(1, cfg.warmup)):
                fn()
        torch.cuda.current_stream(dev).wait_stream(side)
        torch.cuda.synchronize(dev)
        inner, graph, replay_ms = 1, None, 0.0
        for _attempt in range(2):  # capture once; recapture with more repeats if one replay is too short
            graph = _capture(fn, inner)
            for _ in range(max(1, cfg.warmup)):
                graph.replay()
            replay_ms = min(_time_replays(graph, 1, dev) for _ in range(3))
            if replay_ms >= cfg.min_replay_ms or inner >= cfg.max_inner:
                break
            inner = int(min(cfg.max_inner, math.ceil(inner * cfg.min_replay_ms / max(replay_ms, 1e-4))))
        n = int(min(10_000, max(1, math.ceil(cfg.target_window_ms / max(replay_ms, 1e-4)))))
        samples = [_time_replays(graph, n, dev) / inner for _ in range(cfg.windows)]
        del graph
        return statistics.median(samples)


def round_robin(keys: Sequence[str], measure: Callable[[str], float], passes: int, seed: int = 0,
                samples: dict[str, list[float]] | None = None,
                checkpoint: Callable[[dict[str, list[float]]], None] | None = None,
                checkpoint_every_s: float = 30.0, desc: str = "measure",
                progress: bool = True, unit: str = "entry",
                deadline: float | None = None) -> dict[str, list[float]]:
    """Measure every key once per pass, in a fresh shuffled order each pass.

    Args:
        keys: what to measure (distinct).
        measure: ``key -> ms``.
        passes: number of passes.
        seed: shuffling seed (pass ``p`` uses ``(seed, p)``).
        samples: per-key results of an interrupted run; a key with ``k`` samples
            skips passes ``0..k-1`` (resume).
        checkpoint: called with the samples every ``checkpoint_every_s`` seconds and at
            the end (to write a partial table).
        desc: progress-bar label.
        progress: show a tqdm progress bar on stderr (only when stderr is a terminal:
            a bar redrawn into a log file is noise).
        unit: what one measurement is, for the bar (``entry``, ``arch``).
        deadline: a ``time.monotonic()`` value after which no measurement starts; the
            samples so far come back (fewer than ``passes`` for some keys).

    Returns:
        ``key -> [ms per pass]``.
    """
    from tqdm import tqdm

    samples = {k: list(samples.get(k, [])) for k in keys} if samples else {k: [] for k in keys}
    total = sum(max(0, passes - len(v)) for v in samples.values())
    last = time.monotonic()
    try:
        with tqdm(total=total, desc=desc, unit=unit, disable=not show_progress(progress), leave=False) as bar:
            for p in range(passes):
                todo = sorted(k for k in keys if len(samples[k]) <= p)
                random.Random(f"{seed}-{p}").shuffle(todo)
                for key in todo:
                    if deadline is not None and time.monotonic() >= deadline:
                        return samples
                    samples[key].append(float(measure(key)))
                    bar.update(1)
                    if checkpoint is not None and time.monotonic() - last >= checkpoint_every_s:
                        checkpoint(samples)
                        last = time.monotonic()
    finally:  # also on Ctrl-C or an error: keep what was measured
        if checkpoint is not None:
            checkpoint(samples)
    return samples


def show_progress(progress: bool) -> bool:
    """Draw a progress bar: asked for, and stderr is a terminal."""
    try:
        return bool(progress) and sys.stderr.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stderr
        return False


def summarize(values: Sequence[float]) -> tuple[float, float]:
    """``(median, spread)`` of per-pass medians; spread is ``(max - min) / median``."""
    med = statistics.median(values)
    return med, (max(values) - min(values)) / med if med > 0 else 0.0


def _driver_version() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=False)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_info(cfg: TimingConfig) -> dict:
    """Provenance of the measuring machine: device name, driver, CUDA/cuDNN/torch versions."""
    info = {"torch": torch.__version__, "cuda": torch.version.cuda or "none", "python": platform.python_version(),
            "num_threads": torch.get_num_threads(), "cpu": _cpu_name(), "cpu_count": os.cpu_count()}
    if cfg.is_cuda:  # pragma: no cover - GPU
        dev = torch.device(cfg.device)
        info.update(device_name=torch.cuda.get_device_name(dev), driver=_driver_version(),
                    cudnn=torch.backends.cudnn.version(), cudnn_benchmark=torch.backends.cudnn.benchmark)
    else:
        info.update(device_name=info["cpu"], driver="none")
    return info
