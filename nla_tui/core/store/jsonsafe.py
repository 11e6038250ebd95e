"""JSON that every reader accepts: no NaN / Infinity, ever.

Python's json writes bare `NaN` and `Infinity`, which are not JSON: a browser's
JSON.parse (the HTML export), jq and most other readers reject the whole document.
A non-finite number has no meaning to keep anyway, so it is written as null, and a
warning says where and how many, so the loss is never silent.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

log = logging.getLogger("nla_tui")


def finite(obj: Any) -> tuple[Any, int]:
    """A copy of `obj` with every non-finite float replaced by None, and how many were."""
    count = 0

    def walk(x: Any) -> Any:
        nonlocal count
        if isinstance(x, float) and not math.isfinite(x):
            count += 1
            return None
        if isinstance(x, dict):
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [walk(v) for v in x]
        return x

    return walk(obj), count


def dumps_finite(obj: Any, where: str, **kwargs: Any) -> str:
    """json.dumps that writes null (and logs a warning) for NaN / ±Infinity."""
    clean, n = finite(obj)
    if n:
        log.warning("%s: %d non-finite number(s) (NaN/Infinity) written as null", where, n)
    kwargs.setdefault("ensure_ascii", False)
    return json.dumps(clean, allow_nan=False, **kwargs)
