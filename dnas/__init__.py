"""dnas: DCS-DNAS, differentiable architecture search with DCS-Attention for person Re-ID.

Public API for users:
    dnas.load_space(name_or_path)          -> SearchSpace (``tiny``, ``fbnetv2``, ``large``, ``xlarge`` or a YAML path)
    dnas.build_model(arch, num_classes=..) -> a fresh plain nn.Module of a derived arch (YAML path or dict)
    dnas.load_derived(dir)                 -> the plain nn.Module of a ``dnas-derive`` output, in eval mode
"""
from __future__ import annotations

__version__ = "0.1.0"

from dnas.space import load_space  # noqa: E402


def build_model(arch, num_classes: int | None = None, attention: str | bool | None = None):
    """Build a fresh plain network from a derived arch (YAML path, directory or dict).

    ``attention`` (``none``, ``self`` or ``dcs``) overrides the arch's; a bool is the
    legacy ``use_dcs``.
    """
    from dnas.export import build_model as _build

    return _build(arch, num_classes=num_classes, attention=attention)


def load_derived(directory):
    """Load a ``dnas-derive`` output directory: the plain network with its weights, in eval mode."""
    from dnas.export import load_derived as _load

    return _load(directory)


__all__ = ["__version__", "load_space", "build_model", "load_derived"]
