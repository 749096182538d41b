"""Differentiable expected latency of the supernet's architecture distribution
(LAT in the search loss, paper eq. 5; docs/method.md section 5; FBNet's LUT cost).

For option weights ``p`` (Gumbel-softmax samples or softmax probabilities: an
:class:`dnas.models.ArchChoice`)::

    E[LAT] = stem + classifier
           + sum_g  p_g . (sum of DCS modules of group g + head if g is the last group)
           + sum_{blocks b inside a group g}  sum_{k,e} p_g[k] p_b[e] T_b[k, e]
           + sum_{first blocks b of a group}  sum_{i,e,o} p_in[i] p_b[e] p_out[o] T_b[i, e, o]

where ``T_b`` holds the table latencies of block ``b`` over its width options
(``in == out`` inside a group) and mid options, ``p_in`` is the previous group's width
distribution (the stem width is fixed). Since the factors are independent choices,
this is the exact expectation of the table sum of the sampled architecture; with a
one-hot choice it equals the table sum of that derived architecture.

All tables are gathered once (:class:`LatencyModel`); a call is a handful of einsums
(blocks of a group with the same number of mid options are stacked) and moves the
tensors to the choice's device on first use.
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
        group_vec = [torch.zeros(len(o), dtype=torch.float64) for o in space.group_options]
        same: dict[tuple[int, int], list[tuple[int, torch.Tensor]]] = {}
        self._cross: list[tuple[int | None, int, int, torch.Tensor]] = []
        for slot in module_slots(space, self.attention, self.num_classes, self.bnneck):
            try:
                lat = _lookup(table, slot.entries)
            except LatencyTableError as exc:
                if slot.kind != "classifier":
                    raise
                raise LatencyTableError(f"{exc}; the table covers num_classes {table.meta.get('num_classes')}: "
                                        f"profile with --num-classes {self.num_classes}, or pass num_classes=0 "
                                        "to leave the classifier out") from None
            if not slot.axes:
                const = const + lat
            elif slot.kind in ("dcs", "head"):
                group_vec[slot.axes[0][1]] += lat  # (K_g,)
            elif len(slot.axes) == 2:  # block inside a group: (K, E)
                g, b = slot.axes[0][1], slot.axes[1][1]
                same.setdefault((g, lat.shape[1]), []).append((b, lat))
            else:  # first block of a group: (K_in, E, K_out)
                gin = slot.axes[0][1] if slot.axes[0][0] == "width" else None
                self._cross.append((gin, slot.axes[1][1], slot.axes[2][1], lat))
        self._const = const
        self._group_vec = group_vec
        self._same = [(g, [b for b, _ in items], torch.stack([t for _, t in items]))  # (n, K, E)
                      for (g, _), items in same.items()]
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

            self._device_cache[key] = {
                "const": mv(self._const), "group_vec": [mv(v) for v in self._group_vec],
                "same": [(g, idx, mv(t)) for g, idx, t in self._same],
                "cross": [(gi, b, go, mv(t)) for gi, b, go, t in self._cross],
            }
        return self._device_cache[key]

    def expected_ms(self, choice, calibrated: bool | None = None) -> torch.Tensor:
        """Expected latency (ms) under ``choice``, differentiable w.r.t. its weights.

        Args:
            choice: an :class:`dnas.models.ArchChoice` (``width``: one (K_g,) tensor per
                width group, ``expansion``: one (E_b,) tensor per block).
            calibrated: override the model's ``calibrated`` setting.

        Returns:
            A scalar tensor on the choice's device and dtype.
        """
        pw, pe = choice.width, choice.expansion
        t = self._tensors(pw[0].device, pw[0].dtype)
        total = t["const"]
        for g, vec in enumerate(t["group_vec"]):
            total = total + pw[g] @ vec
        for g, idx, lat in t["same"]:
            total = total + torch.einsum("k,nke,ne->", pw[g], lat, torch.stack([pe[b] for b in idx]))
        for gin, b, gout, lat in t["cross"]:
            p_in = pw[gin] if gin is not None else lat.new_ones(1)
            total = total + torch.einsum("i,e,o,ieo->", p_in, pe[b], pw[gout], lat)
        use_cal = self.calibrated if calibrated is None else calibrated
        return self.table.calibrate(total) if use_cal else total

    def arch_entries(self, indices: dict) -> list[Entry]:
        """Table entries of the derived architecture of index choices, one per module."""
        from dnas.space import SearchSpace

        arch = SearchSpace.from_dict(self.space.arch_from_indices(indices), f"{self.space.name}:derived")
        return derived_entries(arch, self.attention, self.num_classes, self.bnneck)

    def arch_ms(self, indices: dict, calibrated: bool | None = None) -> float:
        """Table sum (ms) of the derived architecture ``{"width": [...], "expansion": [...]}``.

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
