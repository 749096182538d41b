"""Training-step benchmarks: supernet vs the widest static net, the architecture step,
the DCS-Attention overhead and ``torch.compile`` (targets in ``bench/README.md``).

Each function builds its models, times them side by side with
:func:`bench.common.time_step`, frees them and returns a :mod:`bench.report` result.
"""
from __future__ import annotations

import time
import warnings

import torch

from bench.arch_tools import latency_model_for, widest_arch
from bench.common import (BenchSettings, free_memory, prepare_model, ratio, reid_batch, sync, time_interleaved,
                          time_step)
from bench.proposals import check_equivalent, patched
from bench.report import check, result
from bench.steps import build_plain_step, build_search_steps
from dnas.models import PlainNet, Supernet
from dnas.space import load_space


def _supernet(space, settings: BenchSettings) -> Supernet:
    return prepare_model(Supernet(space, num_classes=settings.num_classes), settings)


def _static(space, settings: BenchSettings, attention: str | None = None) -> PlainNet:
    arch = widest_arch(space, num_classes=settings.num_classes, attention=attention)
    return prepare_model(PlainNet(arch), settings)


def _with_patches(step, names=None):
    def run() -> None:
        with patched() if names is None else patched(names):
            step()
    return run


def count_syncs(step, settings: BenchSettings) -> dict:
    """Host synchronisations of one call of ``step`` (CUDA only), by source line."""
    if not settings.is_cuda:
        return {}
    step()
    sync(settings.device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    where: dict[str, int] = {}
    for w in caught:
        if "synchroniz" in str(w.message):
            loc = f"{w.filename.split('site-packages/')[-1].split('/work/main/')[-1]}:{w.lineno}"
            where[loc] = where.get(loc, 0) + 1
    return dict(sorted(where.items(), key=lambda kv: -kv[1]))


def _proposal_step(net, settings: BenchSettings, x, labels, notes: list) -> tuple | None:
    """``(timing, max relative difference, host syncs)`` of the weight step with the
    proposals of :mod:`bench.proposals` patched in; ``None`` (and a note) when they do not
    run on the current code: the figures against the targets must not depend on them."""
    try:
        rel = check_equivalent(net, x)
        steps = build_search_steps(net, settings, x, labels, seed=1)
        timed = time_step(_with_patches(steps.weights), settings)
        return timed, rel, count_syncs(_with_patches(steps.weights), settings)
    except Exception as exc:  # noqa: BLE001 - a proposal out of date with the package
        notes.append(f"proposal figures skipped: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        return None
    finally:
        free_memory(settings.device)


def bench_supernet(space_name: str, settings: BenchSettings) -> dict:
    """Supernet weight step (Gumbel mixture) vs the widest static net, time and memory."""
    space = load_space(space_name)
    x, labels = reid_batch(settings, space)
    figs, notes = {}, []
    net = _supernet(space, settings)
    steps = build_search_steps(net, settings, x, labels)
    sup = time_step(steps.weights, settings)
    syncs = count_syncs(steps.weights, settings)
    del steps
    free_memory(settings.device)
    prop = _proposal_step(net, settings, x, labels, notes) if settings.proposals else None
    del net
    free_memory(settings.device)
    static = _static(space, settings)
    step = build_plain_step(static, settings, x, labels)
    st = time_step(step, settings)
    st_prop = None
    if prop is not None:  # the static net's share of the proposal
        st_prop = time_step(_with_patches(step, ("dcs_fast",)), settings)
    del static, step
    free_memory(settings.device)
    figs.update(supernet_step_ms=sup["median_ms"], static_step_ms=st["median_ms"],
                supernet_step_mean_ms=sup["mean_ms"], static_step_mean_ms=st["mean_ms"],
                time_ratio=ratio(sup["median_ms"], st["median_ms"]),
                supernet_peak_mib=sup["peak_mib"], static_peak_mib=st["peak_mib"],
                memory_ratio=ratio(sup["peak_mib"], st["peak_mib"]))
    if syncs:
        figs.update(host_syncs_per_step=sum(syncs.values()), host_syncs_by_line=syncs)
    checks = [check("step time supernet / widest static", figs["time_ratio"], "<=", 1.25, "x")]
    mem_op = "<=" if space.name.endswith("xlarge") else "report"
    checks.append(check("peak memory supernet / widest static", figs["memory_ratio"], mem_op, 1.3, "x"))
    if prop is not None and st_prop is not None:
        timed, rel, prop_syncs = prop
        figs.update(proposal_step_ms=timed["median_ms"], proposal_peak_mib=timed["peak_mib"],
                    proposal_static_step_ms=st_prop["median_ms"], proposal_static_peak_mib=st_prop["peak_mib"],
                    proposal_time_ratio=ratio(timed["median_ms"], st_prop["median_ms"]),
                    proposal_memory_ratio=ratio(timed["peak_mib"], st_prop["peak_mib"]), proposal_max_rel_diff=rel)
        if prop_syncs:
            figs["proposal_host_syncs_per_step"] = sum(prop_syncs.values())
        checks.append(check("proposal (masks folded into BN, faster DCS, batched noise): time / static with faster "
                            "DCS", figs["proposal_time_ratio"], "report", None, "x"))
        checks.append(check("proposal: peak memory / static", figs["proposal_memory_ratio"], "report", None, "x"))
        if not rel <= 1e-3:
            notes.append(f"proposal output differs from the current supernet by {rel:.3g} (relative, fp32): check it")
    if not settings.is_cuda:
        notes.append("CPU: no peak-memory figure (torch.cuda.max_memory_allocated is CUDA only)")
    h, w = settings.resolution(space)
    notes.append(f"{h}x{w}, batch {settings.batch}; proposal = bench/proposals.py patched in, not the package")
    return result(f"supernet/{space.name}", f"{space.name} search step vs widest static net", figs, checks, notes)


def bench_arch(space_name: str, settings: BenchSettings) -> dict:
    """Architecture step (latency cost, Adam on arch params) vs the weight step."""
    space = load_space(space_name)
    x, labels = reid_batch(settings, space)
    net = _supernet(space, settings)
    from dnas.latency.loss import LatencyLoss

    latency, source = latency_model_for(space, net, "cuda" if settings.is_cuda else "cpu")
    steps = build_search_steps(net, settings, x, labels, latency=latency, latency_loss=LatencyLoss("multiplicative"))
    w = time_step(steps.weights, settings)
    a = time_step(steps.arch, settings)
    g = time_step(steps.arch_grad_only, settings)
    del net, steps
    free_memory(settings.device)
    r = ratio(a["median_ms"], w["median_ms"])
    figs = {"weights_step_ms": w["median_ms"], "arch_step_ms": a["median_ms"], "arch_grad_only_ms": g["median_ms"],
            "arch_vs_weights": r, "arch_grad_only_vs_weights": ratio(g["median_ms"], w["median_ms"]),
            "epoch_time_vs_weights_only": 0.8 + 0.2 * r if r else None,
            "arch_peak_mib": a["peak_mib"], "weights_peak_mib": w["peak_mib"], "latency_table": source}
    checks = [check("architecture step / weight step", r, "<=", 1.2, "x"),
              check("epoch (80% weight + 20% arch steps) / weight steps only", figs["epoch_time_vs_weights_only"],
                    "report", None, "x"),
              check("proposal (autograd.grad on arch params only) / weight step",
                    figs["arch_grad_only_vs_weights"], "report", None, "x")]
    notes = [f"latency cost from {source}"]
    return result(f"arch/{space.name}", f"{space.name} architecture step", figs, checks, notes)


DCS_VARIANTS = (("none", "linear"), ("self", "linear"), ("dcs", "linear"), ("dcs", "softmax"))


def bench_dcs(space_name: str, settings: BenchSettings) -> dict:
    """The widest derived net without attention, with self-attention, and with DCS-Attention
    in the linear (default) and softmax forms: training step time, peak memory, MACs."""
    from dnas.model_stats import count_macs

    times, macs, cpu_steps = {}, {}, {}
    for attention, form in DCS_VARIANTS:
        space = load_space(space_name).with_attention(form=form)
        x, labels = reid_batch(settings, space)
        name = attention if attention == "none" else f"{attention}_{form}"
        net = _static(space, settings, attention=attention)
        macs[name] = count_macs(PlainNet(net.arch, attention=attention), list(x.shape[1:]))
        step = build_plain_step(net, settings, x, labels)
        if not settings.is_cuda:  # CPU: timed below, interleaved
            cpu_steps[name] = step
            if (attention, form) == ("dcs", "linear"):
                cpu_steps["proposal"] = _with_patches(step, ("dcs_fast",))
            continue
        times[name] = time_step(step, settings)
        if (attention, form) == ("dcs", "linear"):
            times["proposal"] = time_step(_with_patches(step, ("dcs_fast",)), settings)
        del net, step
        free_memory(settings.device)
    if cpu_steps:
        # NOTE: on a shared CPU host one variant after another drifted by +-12 points between
        # runs; in rotation each overhead is the median of same-round ratios
        times = {n: {**t, "peak_mib": None} for n, t in time_interleaved(cpu_steps, settings, "none").items()}
        del cpu_steps
        free_memory(settings.device)
    base = times["none"]["median_ms"]
    figs = {f"{n}_ms": t["median_ms"] for n, t in times.items()}
    figs.update({f"{n}_peak_mib": t["peak_mib"] for n, t in times.items() if n != "proposal"})
    figs.update({f"{n}_macs": m for n, m in macs.items()})
    for n in ("self_linear", "dcs_linear", "dcs_softmax", "proposal"):
        r = times[n].get("paired_ratio") or ratio(times[n]["median_ms"], base)
        figs[f"{n}_overhead"] = r - 1 if r else None
    figs["timing"] = "interleaved (paired ratios)" if "paired_ratio" in times["none"] else "one variant after another"
    for n in ("self_linear", "dcs_linear", "dcs_softmax"):
        figs[f"{n}_macs_overhead"] = macs[n] / macs["none"] - 1
    figs["overhead"] = figs["dcs_linear_overhead"]
    figs["dcs_modules"] = len(load_space(space_name).dcs_stages)
    if settings.is_cuda:
        figs["sdpa_fwd_bwd_ms_by_backend"] = sdpa_backends(load_space(space_name), settings)
    checks = [check("training step overhead of DCS-Attention (linear form)", figs["overhead"], "<=", 0.10, "%"),
              check("MACs added by DCS-Attention (linear form)", figs["dcs_linear_macs_overhead"], "<=", 0.10, "%"),
              check("softmax form: step overhead", figs["dcs_softmax_overhead"], "report", None, "%"),
              check("proposal (mask folded into BN, logistic noise): overhead", figs["proposal_overhead"], "report",
                    None, "%")]
    return result(f"dcs/{space_name}", f"{space_name} widest derived net: none / self / DCS (linear, softmax)",
                  figs, checks, [f"input {tuple(x.shape)}"])


def sdpa_backends(space, settings: BenchSettings) -> dict:
    """Forward+backward ms of DCS's attention (B, 1, N, C) per SDPA backend (``None``:
    the backend refuses the shape), also with C zero-padded to a multiple of 8."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {name: getattr(SDPBackend, attr) for name, attr in
                (("flash", "FLASH_ATTENTION"), ("efficient", "EFFICIENT_ATTENTION"), ("cudnn", "CUDNN_ATTENTION"),
                 ("math", "MATH")) if hasattr(SDPBackend, attr)}
    out = {}
    for n, c in dcs_shapes(space, settings):
        for pad in sorted({c, -(-c // 8) * 8}):
            q = torch.randn(settings.batch, 1, n, pad, device=settings.device, dtype=torch.bfloat16,
                            requires_grad=True)
            row = {}
            for name, backend in backends.items():
                def step() -> None:
                    with sdpa_kernel([backend]):
                        torch.nn.functional.scaled_dot_product_attention(q, q, q).sum().backward()
                try:
                    row[name] = time_step(step, settings, steps=5, warmup=2)["median_ms"]
                except RuntimeError:
                    row[name] = None
            out[f"N{n}_C{c}" + (f"_padded{pad}" if pad != c else "")] = row
            del q
    return out


def bench_compile(space_name: str, settings: BenchSettings) -> dict:
    """``torch.compile`` of the supernet (as ``dnas-search --set compile=true``): compile
    time (first step) and steady-state speed-up of the weight step."""
    import torch._dynamo

    space = load_space(space_name)
    x, labels = reid_batch(settings, space)
    net = _supernet(space, settings)
    eager = time_step(build_search_steps(net, settings, x, labels).weights, settings)
    torch._dynamo.reset()
    compiled = torch.compile(net, backend=settings.compile_backend)
    steps = build_search_steps(net, settings, x, labels, forward_model=compiled, seed=2)
    t0 = time.perf_counter()
    steps.weights()
    sync(settings.device)
    first_s = time.perf_counter() - t0
    comp = time_step(steps.weights, settings, warmup=max(1, settings.warmup // 2))
    del net, compiled, steps
    torch._dynamo.reset()
    free_memory(settings.device)
    figs = {"backend": settings.compile_backend, "eager_step_ms": eager["median_ms"],
            "compiled_step_ms": comp["median_ms"], "speedup": ratio(eager["median_ms"], comp["median_ms"]),
            "first_step_s": first_s, "compile_s": first_s - eager["median_ms"] / 1e3,
            "eager_peak_mib": eager["peak_mib"], "compiled_peak_mib": comp["peak_mib"]}
    checks = [check("speed-up of the weight step", figs["speedup"], "report", None, "x"),
              check("compile time (first step minus one eager step)", figs["compile_s"], "report", None, " s")]
    notes = [f"backend {settings.compile_backend}"]
    if settings.compile_backend != "inductor":
        notes.append("not inductor: checks that the supernet traces, says nothing about speed")
    return result(f"compile/{space.name}", f"{space.name} torch.compile supernet step", figs, checks, notes)


def bench_profile(space_name: str, settings: BenchSettings, out_dir) -> dict:
    """torch.profiler tables of the supernet weight step and the widest static step."""
    from pathlib import Path

    from torch.profiler import ProfilerActivity, profile

    space = load_space(space_name)
    x, labels = reid_batch(settings, space)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if settings.is_cuda else [])
    figs, text, per_op = {}, [], {}
    for label in ("supernet", "static"):
        net = _supernet(space, settings) if label == "supernet" else _static(space, settings)
        step = build_search_steps(net, settings, x, labels).weights if label == "supernet" else \
            build_plain_step(net, settings, x, labels)
        for _ in range(max(1, settings.warmup)):
            step()
        sync(settings.device)
        n = 3
        with profile(activities=acts) as prof:
            for _ in range(n):
                step()
            sync(settings.device)
        avg = prof.key_averages()
        key = _time_key(avg, settings.is_cuda)
        text += [f"== {label} weight step, {space.name}, {n} steps ==", avg.table(sort_by=key, row_limit=30), ""]
        rows = sorted(avg, key=lambda e: -getattr(e, key, 0.0))[:12]
        figs[f"{label}_top_ops"] = [{"op": e.key, "calls_per_step": e.count / n,
                                     "self_ms_per_step": getattr(e, key, 0.0) / 1e3 / n} for e in rows]
        figs[f"{label}_profiled_ops_per_step"] = sum(e.count for e in avg) / n
        per_op[label] = {e.key: (e.count / n, getattr(e, key, 0.0) / 1e3 / n) for e in avg}
        del net, step
        free_memory(settings.device)
    sup, st = per_op["supernet"], per_op["static"]
    extra = sorted(((op, c - st.get(op, (0, 0.0))[0], t - st.get(op, (0, 0.0))[1]) for op, (c, t) in sup.items()),
                   key=lambda r: -r[2])[:12]
    figs["supernet_extra_vs_static"] = [{"op": op, "extra_calls_per_step": dc, "extra_self_ms_per_step": dt}
                                        for op, dc, dt in extra]
    path = Path(out_dir) / f"profile_{space.name}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(text))
    return result(f"profile/{space.name}", f"{space.name} profiler (supernet vs static weight step)", figs,
                  [], [f"full tables in {path.name}"])


def _time_key(avg, cuda: bool) -> str:
    """The self-time attribute of profiler events (renamed across torch versions)."""
    if not cuda:
        return "self_cpu_time_total"
    first = next(iter(avg), None)
    return "self_device_time_total" if first is not None and hasattr(first, "self_device_time_total") \
        else "self_cuda_time_total"
