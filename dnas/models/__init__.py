"""Networks: the supernet, plain derived nets, and deriving one from the other."""
from dnas.models.derive import derive_arch, derive_plain, slice_state_dict
from dnas.models.plain import PlainNet
from dnas.models.supernet import ArchChoice, Supernet

__all__ = ["ArchChoice", "Supernet", "PlainNet", "derive_arch", "derive_plain", "slice_state_dict"]
