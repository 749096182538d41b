"""Differentiable expected latency of the supernet's architecture distribution
(LAT in the search loss, paper eq. 5; docs/method.md section 5; FBNet's LUT cost).

For option weights ``p`` (Gumbel-softmax samples or softmax probabilities: an
:class:`dnas.models.ArchChoice`, ``{axis: [weights per unit]}``)::

    E[LAT] = sum over modules m of  sum_{i,j,...}  p_{a1}[i] p_{a2}[j] ...  T_m[i, j, ...]

where ``T_m`` holds the table latencies of module ``m`` over the options of the axes
its key depends on (:func:`dnas.latency.keys.module_slots`): nothing for the stem and
the classifier, the group's width for DCS modules and the head, and for a block its
input width (fixed after the stem), its expansion, each op-kwarg axis of the space (the
``kernel`` axis) and its output width (one width axis when input and output share a
group). Since the factors are independent choices and no factor appears twice in one
module, this is the exact expectation of the table sum of the sampled architecture;
with a one-hot choice it equals the table sum of that derived architecture.

All tables are gathered once (:class:`LatencyModel`); modules whose tables have the same
shape over the same axis kinds are stacked, so a call is a handful of einsums, and
moves the tensors to the choice's device on first use.
"""
from __future__ import annotations

from typing import Sequence

import torch

from dnas.errors import LatencyTableError
from dnas.latency.keys import Entry, derived_entries, module_slots
from dnas.latency.table import LatencyTable
from dnas.space.schema import resolve_attention


def _lookup(table: LatencyTable, nested) -> torch.Tensor:
    """Nested lists of entries -> a float64 tensor of their table latencies."""
    if isinstance(nested, Entry):
        return torch.tensor(table.lookup(nested.key), dtype=torch.float64)
    return torch.stack([_lookup(table, item) for item in nested])


class LatencyModel:
    """Expected latency (ms) of a supernet's architecture distribution from a table.

    Args:
        table: a :class:`LatencyTable` profiled for ``space`` (the hash is checked; a
            missing entry raises :class:`dnas.errors.LatencyTableError` here, not later).
        space: the :class:`dnas.space.SearchSpace` of the supernet.
        attention: ``none``, ``self`` or ``dcs`` modules (default: the space's; pass
            the supernet's ``attention``; a bool is the legacy ``use_dcs``).
        num_classes: classifier size (default: the space's); ``0`` leaves the
            classifier out (a Re-ID net at inference keeps only the embedding).
        bnneck: BNNeck before the classifier (default: the space's).
        calibrated: apply the table's linear calibration ``a + b * sum`` when it has one.
    """

    def __init__(self, table: LatencyTable, space, attention: str | bool | None = None, num_classes: int | None = None,
                 bnneck: bool | None = None, calibrated: bool = True):
        table.check_space(space)
        self.table, self.space = table, space
        self.attention = resolve_attention(space.attention, attention)
        self.num_classes = space.num_classes if num_classes is None else int(num_classes)
        self.bnneck = space.bnneck if bnneck is None else bool(bnneck)
        self.calibrated = calibrated
        const = torch.zeros((), dtype=torch.float64)
        stacks: dict[tuple, list[tuple[tuple, torch.Tensor]]] = {}
        for slot in module_slots(space, self.attention, self.num_classes, self.bnneck):
            try:
                lat = _lookup(table, slot.entries)
            except LatencyTableError as exc:
                if slot.kind != "classifier":
                    raise
                raise LatencyTableError(f"{exc}; the table covers num_classes {table.meta.get('num_classes')}: "
                                        f"profile with --num-classes {self.num_classes}, or pass num_classes=0 "
                                        "to leave the classifier out") from None
            factors = [(axis, unit) for axis, unit in slot.axes if axis != "fixed"]
            lat = lat.reshape([n for n, (axis, _) in zip(lat.shape, slot.axes) if axis != "fixed"])
            if not factors:
                const = const + lat
                continue
            if len(set(factors)) != len(factors):
                raise ValueError(f"module {slot.name}: axes {factors} repeat (the product would not be an expectation)")
            signature = (tuple(axis for axis, _ in factors), tuple(lat.shape))
            stacks.setdefault(signature, []).append((tuple(factors), lat))
        self._const = const
        # (axis names, [(axis, unit) per module and factor], (n, *shape) latencies)
        self._stacks = [(names, [f for f, _ in items], torch.stack([t for _, t in items]))
                        for (names, _), items in stacks.items()]
        self._device_cache: dict[tuple, dict] = {}

    @classmethod
    def for_supernet(cls, table: LatencyTable, supernet, calibrated: bool = True,
                     num_classes: int | None = None) -> "LatencyModel":
        """The model matching a :class:`dnas.models.Supernet` (its space, ``attention``,
        ``bnneck`` and, unless given, ``num_classes``)."""
        return cls(table, supernet.space, attention=supernet.attention, bnneck=supernet.bnneck, calibrated=calibrated,
                   num_classes=supernet.num_classes if num_classes is None else num_classes)

    def _tensors(self, device: torch.device, dtype: torch.dtype) -> dict:
        key = (str(device), dtype)
        if key not in self._device_cache:
            def mv(t: torch.Tensor) -> torch.Tensor:
                return t.to(device=device, dtype=dtype)

            self._device_cache[key] = {"const": mv(self._const),
                                       "stacks": [(names, f, mv(t)) for names, f, t in self._stacks]}
        return self._device_cache[key]

    def expected_ms(self, choice, calibrated: bool | None = None) -> torch.Tensor:
        """Expected latency (ms) under ``choice``, differentiable w.r.t. its weights.

        Args:
            choice: an :class:`dnas.models.ArchChoice` or any mapping ``{axis: [weights
                per unit]}`` over the space's axes (``width``: one (K_g,) tensor per
                width group, ``expansion``: one (E_b,) tensor per block, ...).
            calibrated: override the model's ``calibrated`` setting.

        Returns:
            A scalar tensor on the choice's device and dtype.
        """
        first = choice["width"][0]
        t = self._tensors(first.device, first.dtype)
        total = t["const"]
        for names, factors, lat in t["stacks"]:  # lat: (n, K_1, ..., K_r)
            weights = [torch.stack([choice[axis][unit] for axis, unit in (f[i] for f in factors)])  # (n, K_i)
                       for i in range(len(names))]
            operands = [lat, [0, *range(1, len(names) + 1)]]
            for i, w in enumerate(weights, 1):
                operands += [w, [0, i]]
            total = total + torch.einsum(*operands, [])
        use_cal = self.calibrated if calibrated is None else calibrated
        return self.table.calibrate(total) if use_cal else total

    def arch_entries(self, indices: dict) -> list[Entry]:
        """Table entries of the derived architecture of index choices, one per module."""
        from dnas.space import SearchSpace

        arch = SearchSpace.from_dict(self.space.arch_from_indices(indices), f"{self.space.name}:derived")
        return derived_entries(arch, self.attention, self.num_classes, self.bnneck)

    def arch_ms(self, indices: dict, calibrated: bool | None = None) -> float:
        """Table sum (ms) of the derived architecture of index choices ``{axis: [index per unit]}``.

        Computed from the derived arch's own entries (not the tensors above), so it
        checks :meth:`expected_ms` with a one-hot choice.
        """
        total = self.table.total(e.key for e in self.arch_entries(indices))
        use_cal = self.calibrated if calibrated is None else calibrated
        return float(self.table.calibrate(total)) if use_cal else total

    def breakdown(self, indices: dict) -> dict[str, float]:
        """Table sum per kind (``stem``, ``block``, ``dcs``, ``head``, ``classifier``), uncalibrated."""
        out: dict[str, float] = {}
        for e in self.arch_entries(indices):
            out[e.kind] = out.get(e.kind, 0.0) + self.table.lookup(e.key)
        return out

    def bounds_ms(self, calibrated: bool | None = None) -> tuple[float, float]:
        """Table sums of the space's ``min`` and ``max`` architectures (for targets and plots)."""
        return (self.arch_ms(self.space.sample_indices("min"), calibrated),
                self.arch_ms(self.space.sample_indices("max"), calibrated))


def expected_latency(table: LatencyTable, supernet, choice, calibrated: bool = True) -> torch.Tensor:
    """One-off :meth:`LatencyModel.expected_ms` for a supernet (build a model to reuse it)."""
    return LatencyModel.for_supernet(table, supernet, calibrated).expected_ms(choice)


__all__: Sequence[str] = ["LatencyModel", "expected_latency"]
