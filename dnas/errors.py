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


def brief(value, limit: int = 80) -> str:
    """A bounded ``repr`` of a user's value for a message: nested containers, long strings
    and long numbers are cut (``[1, 2, 3, ...]``), never expanded in full, so a value
    built from YAML aliases (billions of items) costs a few hundred steps to show."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict, r.maxset = 3, 4, 4, 4, 4
    r.maxstring, r.maxlong, r.maxother = max(limit - 2, 8), max(limit, 8), max(limit, 8)
    try:
        text = r.repr(value)
    except Exception:  # noqa: BLE001 - a value whose repr fails is still named
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
