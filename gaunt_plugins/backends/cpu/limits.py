"""The CPU kernels' stack limits, read from the ``#define`` lines of their C sources (the one place they live)."""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Dict, Optional

__all__ = ["kernel_limits", "limit_refusal"]


@lru_cache(maxsize=None)
def kernel_limits(source: str) -> Dict[str, int]:
    """``{"MAXP": ..., "MAXI": ..., ...}`` of ``source`` (``"conv.c"``, ``"many_body.c"``, ``"grid_product.c"``)."""
    text = (Path(__file__).with_name(source)).read_text()
    return {name: int(value) for name, value in re.findall(r"^#define\s+(MAX\w+)\s+(\d+)\s*$", text, re.M)}


def limit_refusal(source: str, kernel: str, needs: Dict[str, int], meaning: Dict[str, str]) -> Optional[str]:
    """Why the kernel of ``source`` cannot hold a plan that ``needs`` ``{"MAXP": grid points, ...}``, or ``None``.

    ``meaning`` phrases each limit for the message (``{"MAXP": "{} grid points", "MAXNU": "correlation {}"}``).
    """
    lim = kernel_limits(source)
    if all(value <= lim[name] for name, value in needs.items()):
        return None
    held = ", ".join(meaning[name].format(lim[name]) for name in needs)
    have = ", ".join(str(value) for value in needs.values())
    return f"the CPU {kernel} kernel holds at most {held} (this plan: {have})"
