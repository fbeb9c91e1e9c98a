"""Timing helpers for the GPU op benchmark: CUDA-event medians, forward / forward+backward closures,
peak memory of one call, memory-bandwidth floors."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, Optional, Sequence

import torch

__all__ = ["median_ms", "peak_mib", "fwd_and_fwdbwd", "copy_bandwidth_gbs", "floor_ms", "nbytes"]


def median_ms(fn: Callable[[], object], warmup: int, iters: int, cuda: bool = True) -> float:
    """Median wall time of ``fn`` in ms: CUDA events around each call on a GPU (after ``warmup`` calls,
    which also absorb Triton's JIT compilation), ``perf_counter`` otherwise."""
    for _ in range(warmup):
        fn()
    times = []
    if cuda:
        torch.cuda.synchronize()
        for _ in range(iters):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def peak_mib(fn: Callable[[], object], device: torch.device) -> Optional[float]:
    """Device memory one call of ``fn`` allocates at its peak on top of what was allocated before it
    (the op's workspace and outputs; its inputs are not counted), in MiB; ``None`` off CUDA."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def fwd_and_fwdbwd(make_out: Callable[[], torch.Tensor], inputs: Sequence[torch.Tensor], warmup: int, iters: int,
                   cuda: bool = True) -> Dict[str, Optional[float]]:
    """``{"fwd": ms, "fwdbwd": ms, "fwd_peak_mib": MiB, "fwdbwd_peak_mib": MiB}``: forward under
    ``no_grad``; forward plus the backward of ``out.sum()`` with respect to every input that requires
    grad (as in ANCHORS.md). The peaks (CUDA only, else ``None``) come from one extra call of each,
    after the timed ones."""
    wrt = [x for x in inputs if x.requires_grad]

    def fwd():
        with torch.no_grad():
            make_out()

    def fwdbwd():
        out = make_out()
        torch.autograd.grad(out.sum(), wrt)

    out = {"fwd": median_ms(fwd, warmup, iters, cuda), "fwdbwd": median_ms(fwdbwd, warmup, iters, cuda)}
    device = torch.device("cuda") if cuda else torch.device("cpu")
    out["fwd_peak_mib"] = peak_mib(fwd, device)
    out["fwdbwd_peak_mib"] = peak_mib(fwdbwd, device)
    return out


def copy_bandwidth_gbs(device: torch.device, nbytes_total: int = 1 << 30, iters: int = 20) -> float:
    """Achievable DRAM bandwidth (GB/s) of a device-to-device copy (bytes read + bytes written)."""
    n = nbytes_total // 4
    a = torch.empty(n, dtype=torch.float32, device=device)
    b = torch.empty_like(a)
    ms = median_ms(lambda: b.copy_(a), 3, iters, cuda=device.type == "cuda")
    del a, b
    return 2 * n * 4 / (ms * 1e-3) / 1e9


def nbytes(*tensors: Optional[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def floor_ms(nbytes_moved: int, bandwidth_gbs: float) -> float:
    """Time to move ``nbytes_moved`` once at ``bandwidth_gbs``: no kernel can be faster."""
    return nbytes_moved / (bandwidth_gbs * 1e9) * 1e3
