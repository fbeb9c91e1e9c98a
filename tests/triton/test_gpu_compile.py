"""Every kernel variant compiles for an H100 (sm_90) with Triton's own toolchain, without a GPU.

The interpreter accepts programs the GPU compiler rejects, so the CPU suite also lowers each
kernel (as launched by the public ops on representative MACE / EquiformerV2 shapes) to a cubin,
in a subprocess without ``TRITON_INTERPRET``, and checks ``ptxas -v``: no register spills.
"""
import json

import pytest


@pytest.mark.slow
def test_all_kernels_compile_for_sm90_without_spills(aot_results):
    """(the subprocess is started by conftest.py right after collection, overlapping the other tests)"""
    pytest.importorskip("triton")
    stdout, stderr = aot_results
    assert stdout.strip(), stderr[-4000:]
    results = json.loads(stdout.strip().splitlines()[-1])
    failed = [r for r in results if not r["ok"]]
    assert not failed, failed
    kernels = {r["kernel"] for r in results}
    assert kernels == {"gp_fwd_kernel", "gp_bwd_kernel", "msg_fwd_segment_kernel", "msg_bwd_segment_kernel",
                       "mb_fwd_kernel", "mb_bwd_kernel"}
    spilling = [r for r in results if r["spill_stores"] != 0]
    assert not spilling, spilling
