"""Search spaces and derived architectures as data (docs/method.md section 1); no torch."""
from dnas.space.axes import ChoiceAxis
from dnas.space.op_specs import OP_SPECS, OpKwarg, OpSpec, register_op_spec
from dnas.space.space import (
    BlockSpec,
    SearchSpace,
    data_root,
    load_space,
    make_divisible,
    resolve_space_path,
)

__all__ = ["BlockSpec", "ChoiceAxis", "OP_SPECS", "OpKwarg", "OpSpec", "SearchSpace", "data_root",
           "load_space", "make_divisible", "register_op_spec", "resolve_space_path"]
