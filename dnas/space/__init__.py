"""Search spaces and derived architectures as data (docs/method.md section 1)."""
from dnas.space.space import (
    SHORT_NAMES,
    BlockSpec,
    SearchSpace,
    data_root,
    load_space,
    make_divisible,
    resolve_space_path,
)

__all__ = ["SHORT_NAMES", "BlockSpec", "SearchSpace", "data_root", "load_space", "make_divisible", "resolve_space_path"]
