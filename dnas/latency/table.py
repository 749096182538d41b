"""LatencyTable: a lookup table of measured module latencies with its provenance
(docs/architecture.md principle 4; the LUT behind LAT in the search loss, docs/method.md section 5).

On disk a table is two files written atomically: ``NAME.csv`` (one row per entry,
readable by ``pandas.read_csv``) and ``NAME.meta.json`` (provenance: device, driver,
CUDA and torch versions, dtype, batch, resolution, method, date, the space's
``structure_hash()``, the measurement protocol, and an optional linear calibration
``measured ~= a + b * sum`` fitted by ``dnas-latency validate``). The runtime the
entries were timed in is ``runtime`` (``eager`` or ``onnxruntime``, with ``provider``
and an ``onnxruntime`` block of version and session options); a table without it was
timed in eager PyTorch.

CSV columns: ``key`` (from :func:`dnas.latency.keys.latency_key`), ``kind``, ``ms``
(median over passes), ``spread`` ((max - min) / median of the per-pass medians),
``samples`` (number of passes), the key fields for reading by eye, then ``pass_ms``
(the per-pass medians, space-separated: what a resumed profile continues from).

An **incomplete table** (a profile stopped by its time limit, Ctrl-C or a killed job)
is the same two files under ``NAME.partial.csv`` / ``NAME.partial.meta.json``: the
entries measured so far (``samples`` counts their passes), and in the metadata
``"complete": false`` and ``"progress"`` (entries expected, measured, finished). It is
resume state meant to be committed: ``dnas-latency profile`` with the same settings
and ``--out NAME`` continues it (:meth:`LatencyTable.continue_command` prints that
command) and replaces it by ``NAME.csv`` once every entry has all its passes, so a
table can fill up over several GPU sessions (``sessions`` in the metadata: when each
one started). :meth:`LatencyTable.load` refuses an
incomplete table (:class:`IncompleteTableError`, naming the file, the entries missing
and the command that continues it) unless asked for one (``allow_incomplete``), so no
search ever runs on one.

Loading a table for a space whose hash differs, or looking up a key the table lacks,
raises :class:`dnas.errors.LatencyTableError` naming the file and the key: never a
silent zero.
"""
from __future__ import annotations

import csv
import io
import json
import math
import statistics
from pathlib import Path
from typing import Iterable, Mapping

from dnas.errors import LatencyTableError, brief
from dnas.io import atomic_write_json, atomic_write_text
from dnas.latency.keys import KINDS, parse_key

COLUMNS = ("key", "kind", "ms", "spread", "samples", "op", "in_chs", "mid_chs", "out_chs", "stride",
           "kernel_size", "res", "bnneck", "pass_ms")
FORMAT_VERSION = 1
PARTIAL = ".partial"
# what the metadata may name (dnas.latency.onnx_timing runs them; a table only names them)
RUNTIMES = ("eager", "onnxruntime")
PROVIDERS = ("cpu", "cuda", "tensorrt")


class IncompleteTableError(LatencyTableError):
    """An incomplete table (``NAME.partial.csv``) given where a complete one is needed.

    Attributes:
        path: the incomplete table's CSV.
        missing: entries not measured yet; ``total``: entries the table must hold.
        command: the ``dnas-latency profile`` command that continues it.
    """

    def __init__(self, message: str, path: Path, missing: int, total: int, command: str):
        super().__init__(message)
        self.path, self.missing, self.total, self.command = path, missing, total, command


def table_paths(path: str | Path) -> tuple[Path, Path]:
    """``(csv, meta)`` paths of a table given as ``NAME``, ``NAME.csv`` or ``NAME.meta.json``."""
    p = Path(path)
    name = p.name
    for suffix in (".meta.json", ".csv"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return p.with_name(name + ".csv"), p.with_name(name + ".meta.json")


def partial_paths(path: str | Path) -> tuple[Path, Path]:
    """``(NAME.partial.csv, NAME.partial.meta.json)``: the incomplete state of table ``NAME``
    (given as ``NAME``, ``NAME.csv`` or the partial files themselves)."""
    csv_path, _ = table_paths(path)
    stem = csv_path.name[: -len(".csv")]
    stem = stem[: -len(PARTIAL)] if stem.endswith(PARTIAL) else stem
    return table_paths(csv_path.with_name(stem + PARTIAL + ".csv"))


def complete_path(path: str | Path) -> Path:
    """``NAME.csv`` of a table given as ``NAME``, ``NAME.csv`` or ``NAME.partial.csv``."""
    partial_csv, _ = partial_paths(path)
    return partial_csv.with_name(partial_csv.name[: -len(PARTIAL + ".csv")] + ".csv")


def table_exists(path: str | Path) -> bool:
    """A complete table ``NAME.csv`` or an incomplete one ``NAME.partial.csv`` is there."""
    return table_paths(path)[0].is_file() or partial_paths(path)[0].is_file()


def find_table(path: str | Path) -> Path:
    """A table to read, the working directory first, then a shipped one: by the path the
    recipes use (``latency_tables/cpu_tiny_b8_fp32.csv``) or by name (``cpu_tiny_b8_fp32``).
    An incomplete table counts as found (so that loading it says it is incomplete). A
    path found nowhere comes back unchanged (for the caller's not-found message)."""
    from dnas.resources import find_data_file

    return find_data_file(path, "latency_tables", ".csv", exists=table_exists)


class LatencyTable:
    """Measured latencies (ms) by key, with provenance metadata.

    Args:
        entries: ``key -> ms``.
        meta: provenance and protocol (see module docstring).
        stats: optional ``key -> {"spread": float, "samples": int}``.
        source: where it came from (for messages).
    """

    def __init__(self, entries: Mapping[str, float], meta: dict, stats: Mapping[str, dict] | None = None,
                 source: str = "<table>"):
        self.entries = {k: float(v) for k, v in entries.items()}
        self.meta = dict(meta)
        self.stats = dict(stats or {})
        self.source = source

    # -- lookup -------------------------------------------------------------------
    def lookup(self, key: str) -> float:
        """Latency of one entry in ms.

        Raises:
            LatencyTableError: the table has no such key.
        """
        try:
            return self.entries[key]
        except KeyError:
            raise LatencyTableError(
                f"{self.source}: no entry for key {key!r} (the table covers "
                f"{self.meta.get('space', '?')!r}; re-profile with dnas-latency profile)") from None

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def total(self, keys: Iterable[str]) -> float:
        """Sum of the entries of ``keys`` (repeats counted), in ms."""
        return math.fsum(self.lookup(k) for k in keys)

    # -- provenance ---------------------------------------------------------------
    def check_space(self, space) -> None:
        """Raise unless the table was profiled for ``space``'s structure.

        Raises:
            LatencyTableError: the space hash differs.
        """
        want, have = space.structure_hash(), self.meta.get("space_hash")
        if want != have:
            raise LatencyTableError(
                f"{self.source}: profiled for space {self.meta.get('space', '?')!r} with structure hash "
                f"{str(have)[:12]}, but space {space.name!r} has {want[:12]}; re-profile with "
                f"dnas-latency profile --supernet {space.name}")

    @property
    def calibration(self) -> tuple[float, float] | None:
        """``(a, b)`` of ``measured ~= a + b * sum`` when validate stored one."""
        cal = self.meta.get("calibration")
        return (float(cal["a"]), float(cal["b"])) if cal else None

    def calibrate(self, ms):
        """Apply the stored calibration (identity without one); works on floats and tensors."""
        cal = self.calibration
        return ms if cal is None else cal[0] + cal[1] * ms

    def set_calibration(self, a: float, b: float, info: dict | None = None) -> None:
        """Store ``measured ~= a + b * sum`` (and what it was fitted on) in the metadata."""
        self.meta["calibration"] = {"a": float(a), "b": float(b), **(info or {})}

    @property
    def runtime(self) -> str:
        """``eager`` or ``onnxruntime``: what the entries were timed in (``eager`` for tables
        written before runtimes were recorded)."""
        return str(self.meta.get("runtime") or (self.meta.get("protocol") or {}).get("runtime") or "eager")

    @property
    def method(self) -> str:
        """``eager``, ``cuda-graph``, ``onnxruntime-cpu``, ...: the runtime and how it was timed."""
        return str(self.meta.get("method") or (self.meta.get("protocol") or {}).get("method") or "?")

    # -- completeness -------------------------------------------------------------
    @property
    def is_complete(self) -> bool:
        """False for an incomplete table (metadata ``"complete": false``)."""
        return self.meta.get("complete", True) is not False

    def progress(self) -> dict:
        """How far the profile got: ``total`` entries the space needs, ``measured`` (at
        least one pass), ``missing`` (none yet), ``finished`` (all ``passes``), ``fraction``
        of the measurements done (passes counted)."""
        total = int(sum((self.meta.get("counts") or {}).values())) or len(self.entries)
        passes = int((self.meta.get("protocol") or {}).get("passes") or 1)
        done = [min(passes, int(self.stats.get(k, {}).get("samples", 1))) for k in self.entries]
        finished = sum(d >= passes for d in done)
        return {"total": total, "measured": len(self.entries), "missing": max(0, total - len(self.entries)),
                "finished": finished, "passes": passes,
                "fraction": sum(done) / (total * passes) if total else 1.0}

    def continue_command(self, out: str | Path | None = None) -> str:
        """The ``dnas-latency profile`` command (same settings, ``--out NAME``) that
        continues this incomplete table where it stopped."""
        m, proto = self.meta, dict(self.meta.get("protocol") or {})
        out = complete_path(out or self.source)
        cmd = [f"dnas-latency profile --supernet {m.get('space', '?')} --device {m.get('device', '?')}",
               f"--batch {m.get('batch', '?')} --dtype {m.get('dtype', '?')}"]
        if m.get("channels_last"):
            cmd.append("--channels-last")
        if self.runtime != "eager":
            cmd.append(f"--runtime {self.runtime} --provider {m.get('provider') or proto.get('provider')}")
        if m.get("num_classes"):
            cmd.append("--num-classes " + " ".join(str(n) for n in m["num_classes"]))
        for option, key in (("passes", "passes"), ("windows", "windows"), ("window-ms", "window_ms"),
                            ("warmup", "warmup"), ("min-replay-ms", "min_replay_ms"), ("threads", "threads"),
                            ("seed", "seed")):
            if key in proto:
                cmd.append(f"--{option} {proto[key]:g}" if isinstance(proto[key], float) else
                           f"--{option} {proto[key]}")
        cmd.append(f"--out {str(out)[: -len('.csv')]}")
        return " ".join(cmd)

    def incomplete_error(self) -> IncompleteTableError:
        """The refusal of this incomplete table: the file, what is missing, how to continue."""
        pr = self.progress()
        unfinished = pr["measured"] - pr["finished"]
        parts = [f"{pr['missing']} of {pr['total']} entries missing"] if pr["missing"] else []
        if unfinished:
            parts.append(f"{unfinished} {'more' if parts else 'of ' + str(pr['total']) + ' entries'} with fewer "
                         f"than {pr['passes']} passes")
        cmd = self.continue_command()
        return IncompleteTableError(
            f"{self.source}: incomplete latency table: {' and '.join(parts) or 'marked incomplete'} "
            f"({100 * pr['fraction']:.1f}% of its {pr['total'] * pr['passes']} measurements done); continue it "
            f"with '{cmd}' (it resumes where it stopped)", Path(self.source), pr["missing"], pr["total"], cmd)

    def summary(self) -> dict[str, dict]:
        """Per kind: ``count``, ``min``, ``median``, ``max`` of the entries in ms."""
        by_kind: dict[str, list[float]] = {k: [] for k in KINDS}
        for key, ms in self.entries.items():
            by_kind[key.split("/", 1)[0]].append(ms)
        return {k: {"count": len(v), "min": min(v), "median": statistics.median(v), "max": max(v)}
                for k, v in by_kind.items() if v}

    # -- files --------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``NAME.csv`` and ``NAME.meta.json`` atomically (CSV first).

        Returns:
            The CSV path.
        """
        csv_path, meta_path = table_paths(path)
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(COLUMNS)
        for key in sorted(self.entries):
            kind, fields = parse_key(key)
            st = self.stats.get(key, {})
            res = fields.get("res")
            row = {"key": key, "kind": kind, "ms": f"{self.entries[key]:.6g}",
                   "spread": f"{st['spread']:.4g}" if "spread" in st else "",
                   "samples": st.get("samples", ""), **{k: v for k, v in fields.items() if k != "res"},
                   "res": f"{res[0]}x{res[1]}" if res else "",
                   "pass_ms": " ".join(f"{v:.6g}" for v in st.get("pass_ms", ()))}
            if "bnneck" in fields:
                row["bnneck"] = int(bool(fields["bnneck"]))
            writer.writerow([row.get(c, "") for c in COLUMNS])
        meta = {"format_version": FORMAT_VERSION, **self.meta, "entries": len(self.entries)}
        atomic_write_text(csv_path, buf.getvalue())
        atomic_write_json(meta_path, meta)
        self.source = str(csv_path)
        return csv_path

    def save_meta(self, path: str | Path | None = None) -> Path:
        """Rewrite only the metadata file (after a calibration), atomically."""
        _, meta_path = table_paths(path or self.source)
        return atomic_write_json(meta_path, {"format_version": FORMAT_VERSION, **self.meta,
                                             "entries": len(self.entries)})

    @classmethod
    def load(cls, path: str | Path, space=None, allow_incomplete: bool = False) -> "LatencyTable":
        """Read a table; with ``space``, also check that it covers that space.

        ``NAME`` or ``NAME.csv`` with only ``NAME.partial.csv`` there reads the incomplete
        table, which is refused unless ``allow_incomplete``.

        Raises:
            IncompleteTableError: the table is incomplete and ``allow_incomplete`` is not set.
            LatencyTableError: a file is missing or malformed, or the space hash differs.
        """
        csv_path, meta_path = table_paths(path)
        if not csv_path.is_file() and partial_paths(path)[0].is_file():
            csv_path, meta_path = partial_paths(path)
        for p in (csv_path, meta_path):
            if not p.is_file():
                raise LatencyTableError(f"{p}: latency table file not found (make one with dnas-latency profile)")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise LatencyTableError(f"{meta_path}: not readable JSON "
                                    f"({brief(str(exc), 160).strip(chr(39))})") from None
        if not isinstance(meta, dict) or "space_hash" not in meta:
            raise LatencyTableError(f"{meta_path}: missing key 'space_hash'")
        check_meta(meta, meta_path)
        entries, stats = _read_csv(csv_path)
        # an incomplete table's two files come from one checkpoint, written CSV first; a job
        # killed between the two writes leaves a newer CSV, whose whole rows are kept
        if meta.get("complete") is not False and meta.get("entries") not in (None, len(entries)):
            raise LatencyTableError(f"{csv_path}: {len(entries)} rows, but {meta_path.name} says "
                                    f"{meta['entries']} (a half-copied table?)")
        meta.pop("format_version", None)
        meta.pop("entries", None)
        table = cls(entries, meta, stats, source=str(csv_path))
        if space is not None:
            table.check_space(space)
        if not table.is_complete and not allow_incomplete:
            raise table.incomplete_error()
        return table


# the metadata numbers a table's reader computes with: dotted key -> (integer?, lowest, lowest excluded?)
META_NUMBERS = {"calibration.a": (False, -math.inf, True), "calibration.b": (False, 0.0, True),
                "batch": (True, 1, False), "entries": (True, 0, False), "protocol.passes": (True, 1, False),
                "protocol.windows": (True, 1, False), "protocol.warmup": (True, 0, False),
                "protocol.threads": (True, 0, False), "protocol.batch": (True, 1, False),
                "protocol.window_ms": (False, 0.0, True), "protocol.min_replay_ms": (False, 0.0, False),
                "protocol.max_inner": (True, 1, False)}


def _number_ok(v, integer: bool, lo: float, open_lo: bool) -> bool:
    ok = not isinstance(v, bool) and isinstance(v, int if integer else (int, float)) and math.isfinite(v)
    return ok and (v > lo if open_lo else v >= lo)


def check_meta(meta: dict, meta_path: Path) -> None:
    """Refuse metadata whose numbers a reader computes with are not finite and in range
    (a calibration of ``"abc"`` or ``NaN``, a batch of 0, ...): a :class:`LatencyTableError`
    naming the file and the key."""
    def fail(key: str, expected: str, value) -> LatencyTableError:
        return LatencyTableError(f"{meta_path}: key {key!r}: expected {expected}, got {brief(value)}")

    for section in ("calibration", "protocol", "counts"):
        if meta.get(section) is not None and not isinstance(meta[section], dict):
            raise fail(section, "a mapping", meta[section])
    if meta.get("calibration") is not None and not {"a", "b"} <= set(meta["calibration"]):
        raise fail("calibration", "a mapping with 'a' and 'b' (measured ~= a + b * sum)", meta["calibration"])
    for key, (integer, lo, open_lo) in META_NUMBERS.items():
        section, _, name = key.rpartition(".")
        holder = meta.get(section) if section else meta
        if not isinstance(holder, dict) or holder.get(name) is None:
            continue
        if not _number_ok(holder[name], integer, lo, open_lo):
            what = "an integer" if integer else "a finite number"
            raise fail(key, what + ("" if lo == -math.inf else f" {'>' if open_lo else '>='} {lo:g}"), holder[name])
    for kind, n in (meta.get("counts") or {}).items():
        if not _number_ok(n, True, 0, False):
            raise fail(f"counts.{kind}", "an integer >= 0", n)
    proto = meta.get("protocol") or {}
    for key, value, allowed in (("runtime", meta.get("runtime"), RUNTIMES),
                                ("protocol.runtime", proto.get("runtime"), RUNTIMES),
                                ("provider", meta.get("provider"), PROVIDERS),
                                ("protocol.provider", proto.get("provider"), PROVIDERS)):
        if value is not None and value not in allowed:
            raise fail(key, "one of " + ", ".join(allowed), value)
    if "complete" in meta and not isinstance(meta["complete"], bool):
        raise fail("complete", "true or false", meta["complete"])


def _finite(text: str, path: Path, line: int, key: str, column: str, integer: bool = False) -> float:
    """A CSV cell as a finite number >= 0 (an integer with ``integer``)."""
    try:
        v = int(text) if integer else float(text)
    except (TypeError, ValueError):
        v = math.nan
    if not math.isfinite(v) or v < 0:
        raise LatencyTableError(f"{path}: line {line} key {brief(key)}: {column} is {brief(text)}, expected "
                                f"{'an integer' if integer else 'a finite number'} >= 0")
    return v


def _read_csv(path: Path) -> tuple[dict[str, float], dict[str, dict]]:
    entries: dict[str, float] = {}
    stats: dict[str, dict] = {}
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = {"key", "ms"} - set(reader.fieldnames or ())
            if missing:
                raise LatencyTableError(f"{path}: missing column(s) {sorted(missing)}")
            for line, row in enumerate(reader, start=2):
                key = row["key"]
                parse_key(key)
                try:
                    ms = float(row["ms"])
                except (TypeError, ValueError):
                    ms = float("nan")
                if not math.isfinite(ms) or ms < 0:
                    raise LatencyTableError(f"{path}: line {line} key {brief(key)}: ms is {brief(row['ms'])}, "
                                            "expected a finite number >= 0")
                if key in entries:
                    raise LatencyTableError(f"{path}: line {line}: duplicate key {brief(key)}")
                entries[key] = ms
                st = {}
                if row.get("spread"):
                    st["spread"] = _finite(row["spread"], path, line, key, "spread")
                if row.get("samples"):
                    st["samples"] = int(_finite(row["samples"], path, line, key, "samples", integer=True))
                if row.get("pass_ms"):
                    st["pass_ms"] = [_finite(v, path, line, key, "pass_ms") for v in row["pass_ms"].split()]
                stats[key] = st
    except OSError as exc:
        raise LatencyTableError(f"{path}: cannot read ({exc.strerror})") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise LatencyTableError(f"{path}: not a latency table CSV ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0][:120]})") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise LatencyTableError(f"{path}: malformed latency table row ({str(exc).splitlines()[0][:120]})") from None
    return entries, stats
