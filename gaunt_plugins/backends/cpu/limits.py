"""The CPU kernels' stack limits, read from the ``#define`` lines of their C sources (the one place they live)."""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Dict

__all__ = ["kernel_limits"]


@lru_cache(maxsize=None)
def kernel_limits(source: str) -> Dict[str, int]:
    """``{"MAXP": ..., "MAXI": ..., ...}`` of ``source`` (``"conv.c"``, ``"many_body.c"``, ``"grid_product.c"``)."""
    text = (Path(__file__).with_name(source)).read_text()
    return {name: int(value) for name, value in re.findall(r"^#define\s+(MAX\w+)\s+(\d+)\s*$", text, re.M)}
