"""Training runtime shared by ``dnas-search`` and ``dnas-retrain``: device choice,
seeding and determinism, RNG states that survive a ``weights_only`` checkpoint,
torchrun / DistributedDataParallel set-up, autocast.
"""
from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from dnas.errors import ConfigError


@dataclass
class Runtime:
    """Where this process runs. ``rank``/``world_size`` are 0/1 without torchrun."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_runtime(device: str = "auto") -> Runtime:
    """Pick the device and, under torchrun (``WORLD_SIZE`` > 1), join the process group.

    Args:
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
    """
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but CUDA is not available (use device=cpu)")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    return Runtime(dev, rank, world, local)


def teardown_runtime(rt: Runtime) -> None:
    if rt.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch; with ``deterministic`` force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def rng_state() -> dict:
    """All global RNG states as tensors and plain numbers (loadable with ``weights_only``)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": int(version), "state": torch.tensor(mt, dtype=torch.int64),
                   "gauss": None if gauss is None else float(gauss)},
    }


def set_rng_state(state: dict) -> None:
    """Restore :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), p["gauss"]))


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when ``enabled``; a no-op context on CPU."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def all_reduce_mean(t: torch.Tensor, rt: Runtime) -> torch.Tensor:
    """Mean of ``t`` over ranks (identity without DDP)."""
    if rt.distributed:
        t = t.clone()
        dist.all_reduce(t)
        t /= rt.world_size
    return t


def broadcast_object(obj, rt: Runtime):
    """Rank 0's ``obj`` on every rank."""
    if not rt.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def epoch_batches(loader, start: int, total: int, desc: str, progress: bool):
    """Yield the batches of an epoch from position ``start`` until ``total`` batches are done.

    The loader's sampler must already skip the first ``start`` batches (resume); a tqdm
    bar is shown when ``progress``. Training loops of search and retrain iterate with it.
    """
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=start, desc=desc, leave=False)
    try:
        pos = start
        for batch in loader:
            yield batch
            pos += 1
            if bar is not None:
                bar.update(1)
            if pos >= total:
                break
    finally:
        if bar is not None:
            bar.close()


def prepare_model(net: torch.nn.Module, rt: Runtime, channels_last: bool, compile_model: bool):
    """Move ``net`` to the device (channels_last on CUDA) and wrap it for training.

    Returns:
        The module to call: ``net`` itself, or its DistributedDataParallel wrapper under
        torchrun, compiled with ``torch.compile`` when asked.
    """
    net.to(rt.device)
    if channels_last and rt.device.type == "cuda":
        net.to(memory_format=torch.channels_last)
    model = net
    if rt.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(net, device_ids=[rt.local_rank] if rt.device.type == "cuda" else None)
    if compile_model:
        model = torch.compile(model)
    return model
