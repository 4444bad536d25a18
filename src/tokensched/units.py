"""Parsing durations with units ("500ms", "2s", "1.5m"); a bare number is seconds."""

from __future__ import annotations

import re

_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zµ]*)\s*$")


def parse_duration(value: str | float | int) -> float:
    """Seconds in ``value``; raises ValueError with a short reason."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 500ms or 2s, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        m = _RE.match(value)
        if not m or m.group(2) not in _UNITS | {"": 1.0}:
            raise ValueError(f"expected a duration such as 500ms or 2s, got {value!r}")
        seconds = float(m.group(1)) * _UNITS.get(m.group(2), 1.0)
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError(f"duration must be finite and >= 0, got {value!r}")
    return seconds
