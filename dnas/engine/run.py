"""A training run in its directory (paper sections 3.4 and 4.2): the part every command
shares around the engine's loop (docs/architecture.md, "The training engine").

A command drives a :class:`TrainingRun` of its own kind::

    with SearchRun(cfg, run_dir, ...) as run:  # the recipe validated, the runtime set up
        run.prepare()                           # the engine built, restored, the directory claimed
        summary = run.finish(run.fit())         # the loop's RunResult made into the summary

:meth:`TrainingRun.prepare` builds the engine (:meth:`TrainingRun.build_engine`: every
input is read and checked there, before anything is written), restores a resumed run's
checkpoint, and only then claims the run directory (replacing a run of the same command
with ``--overwrite``) and writes ``config.yaml`` and the run's own start files. On
``--resume`` a run from before the validation split resumes on its own data. An error
once the directory is claimed says how to take the run up again.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from dnas.config import config_to_dict
from dnas.data.protocol import legacy_protocol_changes
from dnas.engine.checkpoint import load_checkpoint
from dnas.engine.loop import Engine, fit
from dnas.engine.result import RunResult
from dnas.errors import DnasError
from dnas.io import atomic_write_json, atomic_write_yaml
from dnas.memory import allocation_error
from dnas.outputs import COMMANDS, claim_run_dir, kept_run_note
from dnas.runtime import Runtime, setup_runtime, teardown_runtime

log = logging.getLogger(__name__)


class TrainingRun:
    """One run of a training command in ``run_dir``; subclasses name their kind, their
    curves and implement :meth:`build_engine`, :meth:`start_files` and :meth:`finish`.

    Args:
        cfg: the resolved recipe (validated here).
        run_dir: the run directory (created once every input has been validated).
        resume: continue from ``run_dir``'s last checkpoint.
        overwrite: replace the run of the same kind in ``run_dir`` (once the inputs validate).
        progress: tqdm bars (on a TTY, rank 0).

    Attributes:
        kind: the run's kind (:data:`dnas.outputs.COMMANDS`): its directory's marker
            and its checkpoints name it.
        curves: the metrics of ``plots/curves.png``.
        legacy_protocol: the recipe has the validation-split keys.
        cfg: the run's config (a subclass may record what it resolved, once, in
            :meth:`build_engine`); written to ``config.yaml``.
    """

    kind = ""
    curves: tuple[str, ...] = ()
    legacy_protocol = True

    def __init__(self, cfg, run_dir: Path, *, resume: bool = False, overwrite: bool = False, progress: bool = True):
        cfg.validate()
        self.run_dir, self.resume, self.overwrite, self.progress = Path(run_dir), resume, overwrite, progress
        if resume and self.legacy_protocol:  # a run from before the validation split resumes on its own data
            cfg = dataclasses.replace(cfg, **legacy_protocol_changes(self.run_dir / "config.yaml", cfg))
        self.cfg = cfg
        self.rt: Runtime | None = None
        self.engine: Engine | None = None
        self._claimed = False

    # -- what a kind of run defines ---------------------------------------------------
    def build_engine(self) -> Engine:
        """The engine, every input read and checked (nothing written yet)."""
        raise NotImplementedError

    def start_files(self) -> dict:
        """``{file name: content}`` written beside ``config.yaml`` at the start of a new run
        (``.yaml`` or ``.json``; ``None`` contents skipped)."""
        return {}

    def finish(self, result: RunResult):
        """After the last epoch, on every rank: the run's outputs and summary from ``result``."""
        raise NotImplementedError

    # -- what the command drives -------------------------------------------------------
    def __enter__(self) -> TrainingRun:
        self.rt = setup_runtime(self.cfg.device)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc is not None and self._claimed:  # the run directory stays: say how to take it up
                self._explain_kept_run(exc)
        finally:
            teardown_runtime(self.rt)
        return False

    def prepare(self) -> Engine:
        """Build the engine, restore a resumed run, claim the directory, write the start files."""
        rt = self.rt
        self.engine = self.build_engine()
        if self.resume:
            self.engine.load_state_dict(load_checkpoint(self.run_dir, self.kind))
            log.info("%s", self.engine.resume_line(self.run_dir))
        if rt.is_main:  # every input is valid: only now the run directory is made (or replaced)
            claim_run_dir(self.run_dir, self.kind, replace=self.overwrite and not self.resume)
        self._claimed = True
        if rt.is_main:
            atomic_write_yaml(self.run_dir / "config.yaml", config_to_dict(self.cfg))
            for name, content in self.start_files().items() if not self.resume else ():
                if content is not None:
                    (atomic_write_json if name.endswith(".json") else atomic_write_yaml)(self.run_dir / name, content)
        return self.engine

    def fit(self) -> RunResult:
        """The epochs left (:func:`dnas.engine.fit`)."""
        title = f"{COMMANDS.get(self.kind, self.kind)} {self.run_dir.name}"
        return fit(self.engine, self.run_dir, list(self.curves), title)

    def _explain_kept_run(self, exc: BaseException) -> None:
        if isinstance(exc, DnasError):
            err = exc
        elif isinstance(exc, (RuntimeError, MemoryError)):
            err = allocation_error(exc)  # an allocator failure: one line, the size and where
        else:
            return
        if err is None:
            return
        if self.rt.is_main:
            err.args = (f"{str(err).rstrip()}; {kept_run_note(self.run_dir)}", *err.args[1:])
        if err is not exc:
            raise err from None
