"""Alpha360: Qlib's raw normalised price and volume history (``qlib/contrib/data/loader.py``, ``Alpha360DL``).

The last 60 bars of each price, divided by the current close, and of the volume, divided by the current volume
(+1e-12), so a model sees the shape of the recent path without its level:

* ``CLOSE{i} = Ref(close, i) / close``, ``OPEN{i} = Ref(open, i) / close``, ``HIGH{i} = Ref(high, i) / close``,
  ``LOW{i} = Ref(low, i) / close`` for ``i`` = 59 .. 0 (Qlib's order: oldest first, then the current bar);
* ``VOLUME{i} = Ref(volume, i) / (volume + 1e-12)``;
* ``VWAP{i}`` is skipped and listed as such: the canonical schema has no vwap column.

``Ref(x, i)`` is NaN until the symbol has ``i`` earlier bars (as in Qlib), so every value uses only bars
``<= t``. The batch library (``features.set: alpha360``) and the incremental engine (``last_only``, on each
symbol's last :data:`HISTORY` bars) run the same single division on the same values: they agree bit for bit.

:func:`as_sequences` turns the flat columns back into (rows, 60 bars, fields) windows, oldest bar first, the
shape the sequence models take: ``history_layout: alpha360`` (with ``lookback: 60``) in a torch family's params
makes each row's window its own Alpha360 history (:mod:`alphaforge.models.sequence`).
"""

from __future__ import annotations

import numpy as np

LOOKBACK: int = 60
#: Bars of a symbol's history the incremental engine keeps (the current one included).
HISTORY: int = LOOKBACK
FIELDS: tuple[str, ...] = ("CLOSE", "OPEN", "HIGH", "LOW", "VWAP", "VOLUME")
_COLUMN: dict[str, str] = {"CLOSE": "close", "OPEN": "open", "HIGH": "high", "LOW": "low", "VWAP": "vwap",
                           "VOLUME": "volume"}
_EPS = 1e-12


def field_of(name: str) -> tuple[str, int]:
    """(field, bars back) of a column name: ``"CLOSE12"`` -> ``("CLOSE", 12)``."""
    field = name.rstrip("0123456789")
    if field not in FIELDS or field == name or not 0 <= int(name[len(field):]) < LOOKBACK:
        raise KeyError(f"{name!r} is not an Alpha360 column (FIELD0..FIELD{LOOKBACK - 1}, FIELD in {FIELDS})")
    return field, int(name[len(field):])


def all_names() -> list[str]:
    """Every column, in Qlib's order: per field, 59 bars back first, the current bar last."""
    return [f"{field}{i}" for field in FIELDS for i in range(LOOKBACK - 1, -1, -1)]


def inputs_of(name: str) -> tuple[str, ...]:
    """The bar columns a column reads."""
    field, _ = field_of(name)
    return ("volume",) if field == "VOLUME" else tuple(dict.fromkeys((_COLUMN[field], "close")))


def window_of(name: str) -> int:
    """Bars of history (the current one included) the column needs before it exists."""
    return field_of(name)[1] + 1


def describe(name: str) -> str:
    field, i = field_of(name)
    denominator = "(volume + 1e-12)" if field == "VOLUME" else "close"
    return f"{_COLUMN[field]} {i} bars earlier / {denominator}"


def plan(present: set[str]) -> tuple[list[str], list[str]]:
    """The columns computable from bar columns ``present``, and one log line per skipped field."""
    names: list[str] = []
    skipped: list[str] = []
    for field in FIELDS:
        members = [f"{field}{i}" for i in range(LOOKBACK - 1, -1, -1)]
        missing = [c for c in inputs_of(members[0]) if c not in present]
        if missing:
            skipped.append(f"features: skipping {field}{LOOKBACK - 1}..{field}0: the bars have no "
                           f"{', '.join(repr(c) for c in missing)} column")
        else:
            names += members
    return names, skipped


def alpha360_values(panels: dict[str, np.ndarray], names: list[str], *, last_only: bool) -> dict[str, np.ndarray]:
    """The columns ``names`` of (rows, bars) panels (each row one symbol's consecutive bars, NaN before its first).

    ``last_only`` False: (rows, bars) arrays. True: (rows,) arrays, the value at the last bar (the panels hold at
    least :data:`HISTORY` bars, NaN-padded in front when shorter).
    """
    n_bars = panels["close"].shape[1]
    if last_only and n_bars < HISTORY:
        raise ValueError(f"alpha360_values: last_only needs {HISTORY} bars of history, got {n_bars}")
    out: dict[str, np.ndarray] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        denominators = {"close": panels["close"][:, -1] if last_only else panels["close"]}
        if "volume" in panels:
            volume = panels["volume"]
            denominators["volume"] = (volume[:, -1] if last_only else volume) + _EPS
        for name in names:
            field, back = field_of(name)
            column = _COLUMN[field]
            x = panels[column]
            if last_only:
                earlier = x[:, -1 - back]
            else:
                earlier = np.full_like(x, np.nan)
                if back < n_bars:
                    earlier[:, back:] = x[:, : n_bars - back]
            out[name] = earlier / denominators["volume" if field == "VOLUME" else "close"]
    return out


def history_columns(names: list[str]) -> tuple[list[int], int]:
    """Positions in ``names`` of the Alpha360 columns, bar-major (59 bars back first) and field-minor, and the
    number of fields present (in :data:`FIELDS` order); ``names`` must hold every bar of those fields."""
    position = {name: j for j, name in enumerate(names)}
    fields = [f for f in FIELDS if f"{f}0" in position]
    missing = [f"{f}{i}" for f in fields for i in range(LOOKBACK) if f"{f}{i}" not in position]
    if not fields or missing:
        raise ValueError(f"alpha360 history: the features lack {missing[:5] or 'every Alpha360 column'}; compute "
                         "them with features.set: alpha360")
    return [position[f"{f}{i}"] for i in range(LOOKBACK - 1, -1, -1) for f in fields], len(fields)


def as_sequences(frame_values: np.ndarray, names: list[str]) -> tuple[np.ndarray, list[str]]:
    """(rows, :data:`LOOKBACK`, fields) windows, oldest bar first, from the flat columns ``names`` of
    ``frame_values`` (rows, len(names)); the fields are those present, in :data:`FIELDS` order."""
    columns, n_fields = history_columns(names)
    fields = [f for f in FIELDS if f"{f}0" in names]
    return frame_values[:, columns].reshape(len(frame_values), LOOKBACK, n_fields), fields
