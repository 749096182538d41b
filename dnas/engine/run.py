"""A training run in its directory (paper sections 3.4 and 4.2): the part every command
shares around the engine's loop (docs/architecture.md, "The training engine").

Validate the recipe; on ``--resume`` let a run from before the validation split resume
on its own data; set up the runtime; build the engine (every input is read and checked
here, before anything is written); restore the checkpoint; only then claim the run
directory (replacing a run of the same command with ``--overwrite``) and write
``config.yaml`` and the run's own start files; :func:`dnas.engine.fit`; finish.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Callable

from dnas.config import config_to_dict
from dnas.engine.checkpoint import load_checkpoint
from dnas.engine.loop import Engine, fit
from dnas.errors import DnasError
from dnas.memory import allocation_error
from dnas.runtime import Runtime, setup_runtime, teardown_runtime

log = logging.getLogger(__name__)


def run_in_dir(cfg, run_dir: Path, *, output_kind: str, resume: bool, overwrite: bool,
               build: Callable[[object, Runtime], tuple[Engine, object, dict]],
               finish: Callable[[Engine, object, Runtime], object], curves: list[str],
               legacy_protocol: bool = True):
    """Run (or resume) a training run into ``run_dir``.

    Args:
        cfg: the resolved recipe.
        run_dir: the run directory (created once every input has been validated).
        output_kind: the directory's kind (:mod:`dnas.outputs`), e.g. ``search-run``.
        resume: continue from ``run_dir``'s last checkpoint.
        overwrite: replace the run of the same kind in ``run_dir`` (once the inputs validate).
        build: ``(cfg, rt) -> (engine, cfg as run, {file name: content})``; the files
            (``.yaml`` or ``.json``; ``None`` contents skipped) are written at the start
            of a new run, beside ``config.yaml``.
        finish: ``(engine, cfg, rt) -> result``, after the last epoch, on every rank.
        curves: the metrics of ``plots/curves.png``.
        legacy_protocol: the recipe has the validation-split keys.

    Returns:
        What ``finish`` returns.
    """
    from dnas.io import atomic_write_json, atomic_write_yaml
    from dnas.outputs import claim_run_dir, kept_run_note

    cfg.validate()
    run_dir = Path(run_dir)
    if resume and legacy_protocol:  # a run from before the validation split resumes on its own data
        from dnas.data.protocol import legacy_protocol_changes

        cfg = dataclasses.replace(cfg, **legacy_protocol_changes(run_dir / "config.yaml", cfg))
    rt = setup_runtime(cfg.device)
    try:
        engine, cfg, files = build(cfg, rt)
        if resume:
            engine.load_state_dict(load_checkpoint(run_dir, engine.kind))
            log.info("%s", engine.resume_line(run_dir))
        if rt.is_main:  # every input is valid: only now the run directory is made (or replaced)
            claim_run_dir(run_dir, output_kind, replace=overwrite and not resume)
        try:
            if rt.is_main:
                atomic_write_yaml(run_dir / "config.yaml", config_to_dict(cfg))
                for name, content in files.items() if not resume else ():
                    if content is not None:
                        (atomic_write_json if name.endswith(".json") else atomic_write_yaml)(run_dir / name, content)
            fit(engine, run_dir, curves, f"{engine.kind} {run_dir.name}")
            return finish(engine, cfg, rt)
        except (DnasError, RuntimeError, MemoryError) as exc:  # the run directory stays: say how to take it up
            err = exc if isinstance(exc, DnasError) else allocation_error(exc)
            if err is None:
                raise
            if rt.is_main:
                err.args = (f"{str(err).rstrip()}; {kept_run_note(run_dir)}", *err.args[1:])
            if err is exc:
                raise
            raise err from None
    finally:
        teardown_runtime(rt)
