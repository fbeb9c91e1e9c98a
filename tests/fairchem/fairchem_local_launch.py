"""fairchem's command line (``fairchem.core._cli.main``) with the rendezvous of its local
multi-process launch (``--num-gpus N``, torch elastic) on a free port of its own.

fairchem builds its ``LaunchConfig`` without an endpoint, so every local launch on a machine uses
torch's default ``localhost:29400`` and run id: a second launch while another is running joins the
first one's store instead of failing, and both break. Here each launch hosts its own store on a port
that was free a moment before (``is_host``: never a client of a foreign store). Everything else is
fairchem's own code. Run as ``python fairchem_local_launch.py ARGS`` or ``gaunt-run
fairchem_local_launch.py ARGS`` with fairchem's arguments."""
from __future__ import annotations

import os
import sys


def main() -> int:
    import fairchem.core._cli as cli
    from torch.distributed.elastic.utils.distributed import get_free_port

    stock = cli.LaunchConfig

    def launch_config(**kwargs):
        kwargs.setdefault("rdzv_endpoint", f"localhost:{get_free_port()}")
        kwargs.setdefault("run_id", f"gaunt-plugins-test-{os.getpid()}")
        kwargs.setdefault("rdzv_configs", {"is_host": True})
        return stock(**kwargs)

    cli.LaunchConfig = launch_config
    result = cli.main()
    return result if isinstance(result, int) else 0


if __name__ == "__main__":  # the spawned ranks import this file as __mp_main__: nothing runs there
    sys.exit(main())
