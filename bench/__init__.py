"""Benchmarks of the dnas models and search steps (not part of the installed package).

- :mod:`bench.run`: ``python -m bench.run --what ... --out DIR``, side-by-side step
  timings and peak memory (supernet vs the widest static net, architecture step, the
  DCS-Attention overhead, dnas vs timm, ONNX Runtime, ``torch.compile``), written to
  ``DIR/bench.json`` and ``DIR/bench.md``;
- :mod:`bench.search_run`: a short latency-targeted search with step timings;
- ``bench/device_run.sh``: everything the GPU machine runs, one time-boxed call and a continuation;
- ``bench/eval_msmt17_size.py``: time and memory of an MSMT17-size Re-ID evaluation.

See ``bench/README.md``.
"""
