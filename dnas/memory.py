"""Memory a network needs, checked before it is built, and allocator failures as one line.

:func:`footprint` is the arithmetic of a space's widest network (every block at its
largest input, mid and output widths and kernel: the shapes of the supernet, and of
the largest architecture it holds): its parameters, and the activations one image
keeps for the backward pass at the space's input size. ``dnas-search --describe``
prints it; :func:`check_build` refuses a net whose parameters do not fit in the
host's available memory before a single tensor is made, and :func:`check_training`
refuses a run whose weights, gradients, optimizer state and a batch's activations do
not fit on its device, both with one line giving the estimate.

Anywhere else, an allocator failure (``DefaultCPUAllocator: can't allocate memory``,
``CUDA out of memory``) becomes a :class:`MemoryLimitError` by :func:`allocation_error`:
one line with the size asked for and the dnas line that asked.
"""
from __future__ import annotations

import math
import os
import re
import traceback
from pathlib import Path

from dnas.errors import DnasError

FLOAT_BYTES = 4
GiB = 1024 ** 3


class MemoryLimitError(DnasError):
    """A network (or one of its tensors) that does not fit in the memory there is."""


def footprint(space, num_classes: int | None = None, attention: str | None = None,
              input_hw: tuple[int, int] | None = None) -> dict:
    """Parameters and per-image training activations of ``space``'s widest network.

    Args:
        space: a :class:`dnas.space.SearchSpace` (a space or a derived arch).
        num_classes: classifier outputs (default: the space's).
        attention: ``none``, ``self`` or ``dcs`` (default: the space's).
        input_hw: the input's height and width (default: the space's input size).

    Returns:
        ``{"params": int, "activations_per_image": int}`` (counts of float values).
    """
    attention = space.attention if attention is None else attention
    num_classes = int(num_classes or space.num_classes)
    h, w = input_hw or space.input_size[1:]
    stem = space.stem
    k, s = stem["kernel_size"], stem["stride"]
    params = 3 * stem["out_chs"] * k * k + 2 * stem["out_chs"]
    h, w = math.ceil(h / s), math.ceil(w / s)
    acts = 2 * stem["out_chs"] * h * w  # conv, BN (the ReLU is in place)
    group_max = [max(o) for o in space.group_options]
    ends = {max(b.index for b in space.blocks if b.stage == st): st for st in range(len(space.stages))}
    c = stem["out_chs"]
    for b in space.blocks:
        cin, mid, cout = max(b.in_options), max(b.mid_options), group_max[b.out_group]
        ks = max(dict(b.op_kwargs).get("kernel_size", (3,)))
        params += cin * mid + mid * ks * ks + mid * cout + 4 * mid + 2 * cout
        acts += 2 * mid * h * w  # 1x1 expand, BN
        h, w = math.ceil(h / b.stride), math.ceil(w / b.stride)
        acts += 3 * mid * h * w + 3 * cout * h * w  # depthwise, BN, mask; project, BN, mask / residual
        c = cout
        stage = ends.get(b.index)
        if stage is not None and attention != "none" and space.stages[stage]["dcs_after"]:
            params += (c * c + c if attention == "dcs" else 0) + 9 * c + 2 * c
            acts += 6 * c * h * w + (h * w * h * w if space.attention_form == "softmax" else 0)
    head = space.head["out_chs"]
    params += c * head + 2 * head + 2 * head + head * num_classes + num_classes
    acts += 2 * head * h * w + 2 * head + num_classes
    return {"params": params, "activations_per_image": acts}


def describe_footprint(space, num_classes: int | None = None) -> str:
    """One line for ``--describe``: the widest net's parameters and activations."""
    fp = footprint(space, num_classes)
    _, h, w = space.input_size
    return (f"widest net: {fp['params'] / 1e6:.1f} M parameters ({_gib(fp['params'] * FLOAT_BYTES)} in fp32); "
            f"training activations about {_gib(fp['activations_per_image'] * FLOAT_BYTES)} per {h}x{w} image")


def _gib(n: float) -> str:
    return f"{n / GiB:.3g} GiB" if n >= GiB / 100 else f"{n / 1024 ** 2:.3g} MiB"


def available_bytes(device=None) -> int | None:
    """Free memory of ``device`` (``cuda``: the GPU's; else the host's available memory,
    within the process's cgroup limit), or ``None`` when it cannot be read."""
    if device is not None and str(device).startswith("cuda"):
        import torch

        try:
            return int(torch.cuda.mem_get_info(torch.device(device))[0])
        except (RuntimeError, AssertionError):  # pragma: no cover - no CUDA
            return None
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):  # pragma: no cover
            free = None
    try:  # a container's limit (cgroup v2)
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            free = min(free if free is not None else math.inf, int(limit) - used)
    except (OSError, ValueError):
        pass
    return None if free is None or free == math.inf else max(0, int(free))


def check_build(space, num_classes: int | None = None, attention: str | None = None, what: str = "net") -> None:
    """Refuse to build ``space``'s widest ``what`` when its parameters exceed the host's
    available memory (nets are built on the host, then moved).

    Raises:
        MemoryLimitError: the estimate and what there is.
    """
    params = footprint(space, num_classes, attention)["params"]
    free = available_bytes()
    if free is not None and params * FLOAT_BYTES > free:
        raise MemoryLimitError(
            f"{space.source}: the {what} of this space has {params / 1e6:.1f} M parameters "
            f"({_gib(params * FLOAT_BYTES)} in fp32), more than the {_gib(free)} of memory available here; narrow "
            "the space (fewer or smaller channels / expansion options)")


def check_training(net, batch: int | None, device, what: str = "run",
                   input_hw: tuple[int | None, int | None] | None = None, act_bytes: int = FLOAT_BYTES) -> None:
    """Refuse a run whose weights, gradients and optimizer state (3 x the parameters of
    the built ``net``) and a ``batch``'s activations (:func:`footprint` of the net's
    space at ``input_hw``, ``None`` parts: the space's; ``act_bytes`` each: 2 under bf16
    autocast) exceed what ``device`` has free.

    Raises:
        MemoryLimitError: the estimate and what there is.
    """
    space = getattr(net, "space", None) or getattr(net, "arch", None)
    params = sum(p.numel() for p in net.parameters())
    acts = 0
    if space is not None and hasattr(space, "blocks") and batch:
        hw = tuple(given or default for given, default in zip(input_hw or (None, None), space.input_size[1:]))
        acts = footprint(space, getattr(net, "num_classes", None), getattr(net, "attention", None), hw)[
            "activations_per_image"] * batch
    need = 3 * params * FLOAT_BYTES + acts * act_bytes
    free = available_bytes(device)
    if free is not None and need > free:
        source = getattr(space, "source", "the network")
        raise MemoryLimitError(
            f"{source}: the {what} needs about {_gib(need)} ({params / 1e6:.1f} M parameters with their gradients "
            f"and optimizer state, and the activations of a batch of {batch}{_at(input_hw)}), more than the "
            f"{_gib(free)} free on {device}; lower the batch (p/k, batch_size) or the input size, or narrow the space")


def _at(input_hw) -> str:
    return f" at {input_hw[0]}x{input_hw[1]}" if input_hw and all(input_hw) else ""


_SIZE = re.compile(r"(?:tried to allocate|Tried to allocate)\s+([0-9.]+\s*(?:bytes|[KMGT]i?B))", re.I)
_MARKERS = ("can't allocate memory", "not enough memory", "out of memory", "DefaultCPUAllocator")


def allocation_error(exc: BaseException) -> MemoryLimitError | None:
    """``exc`` as a one-line :class:`MemoryLimitError` when it is an allocator failure
    (naming the size asked for and the innermost dnas source line), else ``None``."""
    text = str(exc)
    if not (isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError)
                                              and any(m in text for m in _MARKERS))):
        return None
    m = _SIZE.search(text)
    size = m.group(1) if m else "an unknown size"
    if m and m.group(1).endswith("bytes"):
        size = _gib(float(m.group(1).split()[0]))
    where = "?"
    package = str(Path(__file__).resolve().parent)
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if str(Path(frame.filename).resolve()).startswith(package):
            code = (frame.line or "").strip()[:100]
            where = f"{Path(frame.filename).name}:{frame.lineno} ({code})" if code else \
                f"{Path(frame.filename).name}:{frame.lineno}"
            break
    device = "the GPU" if "CUDA" in text or "cuda" in text else "the host"
    return MemoryLimitError(f"out of memory on {device}: {size} asked for at {where}; lower the batch or the "
                            "input size, or narrow the space / architecture")
