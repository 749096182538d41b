"""User-facing errors.

Every mistake a user can make (a bad YAML key, a missing data folder, weights that do not
fit an architecture) raises a :class:`DnasError` whose message names the file, key or
value and what was expected. The CLIs print that message on one line and exit with
status 2 (see :mod:`dnas.cli.common`); library users catch the exception.
"""


class DnasError(Exception):
    """Base class of every error caused by user input."""


class SpaceError(DnasError):
    """A search-space or architecture file that does not validate."""


class ConfigError(DnasError):
    """A recipe or a ``--set key=value`` override that does not validate."""


class DataError(DnasError):
    """A data set that is missing, empty or not in its expected on-disk format."""


class CheckpointError(DnasError):
    """A checkpoint or weight file that is missing or does not fit the model."""


class LatencyTableError(DnasError):
    """A latency table that is missing, stale (space hash differs) or lacks a key."""


class EvaluationError(DnasError, ValueError):
    """Features or distances that cannot be ranked (NaN or inf, e.g. from a diverged model)."""
