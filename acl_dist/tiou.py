"""tIoU thresholds: the protocols' presets and the ``--tiou`` / ``tiou:`` spelling.

A leaf (numpy and the error types only): the config checks a ``tiou`` value when it is
built, and the evaluator scores at the thresholds, so neither imports the other for it.
"""

from __future__ import annotations

import numpy as np

from .errors import DataError

ANET_TIOU = np.linspace(0.5, 0.95, 10)
THUMOS_TIOU = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
TIOU_PRESETS = {"anet": ANET_TIOU, "activitynet": ANET_TIOU, "thumos": THUMOS_TIOU}


def parse_tiou(spec: str | None) -> np.ndarray:
    """``anet`` / ``thumos`` / ``0.1,0.2,...`` / ``0.1:0.7:0.1`` -> thresholds."""
    if spec is None:
        return ANET_TIOU
    spec = spec.strip().lower()
    if spec in TIOU_PRESETS:
        return TIOU_PRESETS[spec]
    try:
        if ":" in spec:
            lo, hi, step = (float(x) for x in spec.split(":"))
            if not step > 0:
                raise ValueError("step must be positive")
            n = int(round((hi - lo) / step)) + 1
            vals = np.round(lo + step * np.arange(max(n, 0)), 10)
        else:
            vals = np.array([float(x) for x in spec.split(",") if x.strip()])
    except (ValueError, OverflowError):
        raise DataError(None, f"bad --tiou {spec!r}: use anet, thumos, a comma list or "
                              "lo:hi:step") from None
    if len(vals) == 0 or not np.all((vals > 0) & (vals <= 1)):
        raise DataError(None, f"bad --tiou {spec!r}: thresholds must lie in (0, 1]")
    return vals
