"""Shared pieces of the benchmarks: the settings of a run, the timing protocol, the
synthetic batch and the environment description.

Timing protocol (:func:`time_step`): ``warmup`` untimed calls, then ``steps`` timed
calls. On CUDA each call is bracketed by CUDA events on the current stream and
synchronised (so one figure is one whole step, launch overhead included); the peak
memory is ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` taken
right before the timed calls (parameters, gradients, optimizer state and the step's
activations). On CPU ``time.perf_counter`` and no memory figure. The reported step
time is the median; the mean over a back-to-back window of ``steps // 2`` calls (one
synchronisation at the end) is reported as well.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch


@dataclass
class BenchSettings:
    """What every benchmark shares.

    Attributes:
        device: ``cpu`` or ``cuda``.
        batch: images per step (P identities x K=4 images).
        height, width: input resolution (``None``: the space's).
        steps: timed steps; ``warmup`` untimed steps before them.
        amp: bf16 autocast (CUDA only, as ``dnas-search``).
        channels_last: NHWC models and inputs (CUDA only, as ``dnas-search``).
        num_classes: classifier size (751: the Market-1501 training identities).
        smoke: tiny settings for tests.
        compile_backend: backend of the ``compile`` benchmark.
        proposals: also time the proposals of :mod:`bench.proposals` (A/B figures).
    """

    device: str = "cuda"
    batch: int = 256
    height: int | None = None
    width: int | None = None
    steps: int = 10
    warmup: int = 5
    amp: bool = True
    channels_last: bool = True
    num_classes: int = 751
    smoke: bool = False
    compile_backend: str = "inductor"
    proposals: bool = True
    extra: dict = field(default_factory=dict)

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def use_amp(self) -> bool:
        return self.amp and self.is_cuda

    @property
    def use_channels_last(self) -> bool:
        return self.channels_last and self.is_cuda

    def autocast(self):
        """bf16 autocast on CUDA when ``amp`` (the search's :func:`dnas.runtime.autocast`)."""
        if self.use_amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def resolution(self, space) -> tuple[int, int]:
        return (self.height or space.input_size[1], self.width or space.input_size[2])

    def to_dict(self) -> dict:
        return asdict(self)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def free_memory(device: str) -> None:
    """Drop garbage and cached blocks so the next model starts from a clean allocator."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def time_interleaved(steps_by_name: dict[str, Callable[[], object]], settings: BenchSettings, base: str,
                     steps: int | None = None, warmup: int | None = None) -> dict:
    """Time several steps in rotation on the CPU, one step of each per round, so that a
    machine whose speed drifts (a shared host) slows every variant alike.

    Returns:
        ``{name: {"median_ms", "min_ms", "steps", "paired_ratio"}}``; ``paired_ratio`` is the
        median over rounds of the step's time over ``base``'s time in the same round.
    """
    steps = settings.steps if steps is None else steps
    warmup = settings.warmup if warmup is None else warmup
    names = list(steps_by_name)
    for _ in range(warmup):
        for n in names:
            steps_by_name[n]()
    rounds = []
    for r in range(steps):
        times = {}
        for n in names[r % len(names):] + names[:r % len(names)]:  # the order rotates too
            t0 = time.perf_counter()
            steps_by_name[n]()
            times[n] = (time.perf_counter() - t0) * 1e3
        rounds.append(times)
    return {n: {"median_ms": statistics.median(t[n] for t in rounds), "min_ms": min(t[n] for t in rounds),
                "steps": steps, "paired_ratio": statistics.median(t[n] / t[base] for t in rounds)}
            for n in names}


def time_step(step: Callable[[], object], settings: BenchSettings, steps: int | None = None,
              warmup: int | None = None) -> dict:
    """Time ``step`` (see the module docstring).

    Returns:
        ``{"median_ms", "mean_ms", "min_ms", "steps", "peak_mib"}`` (``peak_mib`` is
        ``None`` on CPU).
    """
    steps = settings.steps if steps is None else steps
    warmup = settings.warmup if warmup is None else warmup
    dev = settings.device
    for _ in range(warmup):
        step()
    sync(dev)
    peak = None
    if settings.is_cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        if settings.is_cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
    if settings.is_cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
    window = max(2, steps // 2)
    t0 = time.perf_counter()  # back-to-back window: the CPU may run ahead of the GPU
    for _ in range(window):
        step()
    sync(dev)
    mean_window = (time.perf_counter() - t0) * 1e3 / window
    return {"median_ms": statistics.median(times), "mean_ms": mean_window, "min_ms": min(times),
            "steps": steps, "peak_mib": peak}


def reid_batch(settings: BenchSettings, space, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random image batch ``(B, 3, H, W)`` and PK labels (K=4 images per identity)."""
    h, w = settings.resolution(space)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(settings.batch, 3, h, w, generator=gen)
    k = 4 if settings.batch % 4 == 0 and settings.batch >= 8 else 2
    ids = torch.randperm(settings.num_classes, generator=gen)[: max(settings.batch // k, 1)]
    labels = ids.repeat_interleave(k)[: settings.batch]
    x = x.to(settings.device)
    if settings.use_channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, labels.to(settings.device)


def prepare_model(model: torch.nn.Module, settings: BenchSettings) -> torch.nn.Module:
    model = model.to(settings.device)
    if settings.use_channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.train()


def module_version(name: str) -> str | None:
    """The installed version of a module, or ``None`` when it does not import."""
    try:
        mod = __import__(name)
    except Exception:  # noqa: BLE001 - any import failure means "not usable"
        return None
    return str(getattr(mod, "__version__", "unknown"))


def environment(settings: BenchSettings) -> dict:
    """Device, versions, date and host of this run."""
    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": settings.device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "none",
        "python": platform.python_version(),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "timm": module_version("timm"),
        "onnxruntime": module_version("onnxruntime"),
        "settings": settings.to_dict(),
    }
    if settings.is_cuda:
        props = torch.cuda.get_device_properties(0)
        info.update(device_name=torch.cuda.get_device_name(0), cudnn=torch.backends.cudnn.version(),
                    gpu_memory_gib=round(props.total_memory / 2**30, 1), driver=_driver())
    else:
        from dnas.latency.timing import _cpu_name

        info.update(device_name=_cpu_name(), cudnn=None, driver="none")
    return info


def _driver() -> str:
    from dnas.latency.timing import _driver_version

    return _driver_version()


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b`` or ``None`` when either is missing or ``b`` is 0."""
    if a is None or b is None or b == 0:
        return None
    return a / b
