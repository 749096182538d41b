"""``python -m bench.run``: side-by-side benchmarks of the supernet, the derived nets and
the search steps against their targets; writes ``OUT/bench.json`` and ``OUT/bench.md``.

What (``--what all`` or a comma list):

- ``supernet``: the search weight step (Gumbel mixture) of each ``--spaces`` space vs the
  widest static net of the space built plainly (time <= 1.25x; peak memory <= 1.3x for
  xlarge), plus the proposals of :mod:`bench.proposals` patched in;
- ``arch``: the architecture step (latency cost, Adam) vs the weight step (<= 1.2x);
- ``dcs``: the widest derived net with its DCS-Attention modules vs without (<= +8%);
- ``timm``: our derived net vs the same arch from timm's EfficientNet builder
  (throughput >= 0.95x, training and inference);
- ``onnx``: onnxruntime (CUDA / TensorRT provider when installed) vs eager inference;
- ``compile``: ``torch.compile`` of the supernet step (speed-up, compile time);
- ``profile``: torch.profiler tables of the supernet and static steps.

Defaults are the targets' settings: 256x128, batch 256, bf16 autocast and
channels_last on CUDA, 5 warm-up and 10 timed steps (median). ``--smoke`` runs all of
it on CPU on the tiny space (64x32, batch 8, 2 steps) in seconds, so it never rots.
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback

import torch

from bench.common import BenchSettings, environment, free_memory
from bench.report import load_report, result, write_report
from dnas.space import load_space

WHAT = ("supernet", "arch", "dcs", "timm", "onnx", "compile", "profile")
PER_SPACE = ("supernet",)  # run for every --spaces space; the others for --space only


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--what", default="all", help=f"all, or a comma list of: {', '.join(WHAT)}")
    p.add_argument("--out", required=True, help="output directory (bench.json is merged by key)")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny space, 64x32, batch 8, 2 steps")
    p.add_argument("--spaces", default="fbnetv2,large,xlarge", help="spaces of the supernet benchmark")
    p.add_argument("--space", default="xlarge", help="space of the other benchmarks (default xlarge)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--height", type=int, help="input height (default: the space's, 256)")
    p.add_argument("--width", type=int, help="input width (default: the space's, 128)")
    p.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cuda or cpu")
    p.add_argument("--num-classes", type=int, default=751, help="classifier size (751: Market-1501)")
    p.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    p.add_argument("--no-channels-last", action="store_true", help="NCHW on CUDA")
    p.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor; "
                   "aot_eager with --smoke)")
    p.add_argument("--threads", type=int, default=1, help="CPU: intra-op threads (default 1: stable timings on "
                   "a shared machine, where OpenMP threads contend; 0 leaves torch's setting)")
    p.add_argument("--resume", action="store_true", help="skip what OUT/bench.json already holds with status ok "
                   "(a time-boxed run that was cut off continues where it stopped)")
    p.add_argument("--no-proposals", action="store_true", help="skip the A/B figures of bench/proposals.py "
                   "(the supernet item's patched steps): about 40%% of its time")
    p.add_argument("--onnx-tensorrt", action="store_true", help="try onnxruntime's TensorRT provider first "
                   "(engine build can take minutes)")
    return p


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    if args.smoke:
        return BenchSettings(device="cpu", batch=8, height=64, width=32, steps=2, warmup=1, amp=False,
                             channels_last=False, num_classes=10, smoke=True,
                             compile_backend=args.compile_backend or "aot_eager", proposals=not args.no_proposals)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("bench: --device cuda but CUDA is not available")
    return BenchSettings(device=device, batch=args.batch, height=args.height, width=args.width,
                         steps=args.steps, warmup=args.warmup, amp=not args.no_amp,
                         channels_last=not args.no_channels_last, num_classes=args.num_classes,
                         compile_backend=args.compile_backend or "inductor", proposals=not args.no_proposals)


def plan(args: argparse.Namespace) -> list[tuple[str, str]]:
    """``(what, space)`` pairs in run order."""
    what = list(WHAT) if args.what == "all" else [w.strip() for w in args.what.split(",") if w.strip()]
    unknown = [w for w in what if w not in WHAT]
    if unknown:
        raise SystemExit(f"bench: unknown --what {unknown} (expected all or {', '.join(WHAT)})")
    spaces = ["tiny"] if args.smoke else [s.strip() for s in args.spaces.split(",") if s.strip()]
    main_space = "tiny" if args.smoke else args.space
    return [(w, s) for w in what for s in (spaces if w in PER_SPACE else [main_space])]


def run_one(what: str, space: str, settings: BenchSettings, args: argparse.Namespace) -> dict:
    from bench import items_infer, items_train

    if what == "supernet":
        return items_train.bench_supernet(space, settings)
    if what == "arch":
        return items_train.bench_arch(space, settings)
    if what == "dcs":
        return items_train.bench_dcs(space, settings)
    if what == "compile":
        return items_train.bench_compile(space, settings)
    if what == "profile":
        return items_train.bench_profile(space, settings, args.out)
    if what == "timm":
        return items_infer.bench_timm(space, settings)
    return items_infer.bench_onnx(space, settings, tensorrt=args.onnx_tensorrt)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args)
    if settings.is_cuda:
        torch.backends.cudnn.benchmark = True  # as dnas-search (dnas.runtime.seed_everything)
    torch.manual_seed(0)
    old_threads = torch.get_num_threads()
    if not settings.is_cuda and args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        return _run(args, settings)
    finally:
        torch.set_num_threads(old_threads)


def _run(args: argparse.Namespace, settings: BenchSettings) -> int:
    env = environment(settings)
    results = []
    done = {k for k, r in load_report(args.out)["results"].items() if r["status"] == "ok"} if args.resume else set()
    for what, space in plan(args):
        if f"{what}/{load_space(space).name}" in done:
            print(f"bench: {what} {space}: in {args.out}/bench.json already (--resume)", file=sys.stderr)
            continue
        t0 = time.perf_counter()
        print(f"bench: {what} {space} ...", file=sys.stderr, flush=True)
        try:
            r = run_one(what, space, settings, args)
        except Exception as exc:  # noqa: BLE001 - one failure (e.g. out of memory) must not lose the others
            last = traceback.format_exception_only(type(exc), exc)[-1].strip()
            traceback.print_exc()
            r = result(f"{what}/{space}", f"{space} {what}", status="error", error=last[:500])
        free_memory(settings.device)
        r["figures"]["wall_s"] = round(time.perf_counter() - t0, 2)
        results.append(r)
        print(f"bench: {what} {space}: {r['status']} in {r['figures']['wall_s']:.1f}s", file=sys.stderr, flush=True)
        write_report(args.out, env, [r])  # after every item: a killed run keeps what it measured
    report = write_report(args.out, env, [])
    s = report["summary"]
    print(f"bench: wrote {args.out}/bench.json and bench.md ({s['met']} of {s['targets']} targets met, "
          f"{sum(r['status'] == 'error' for r in results)} errors)")
    return 1 if any(r["status"] == "error" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
