"""Multi-process start-up: `jax.distributed.initialize` from explicit flags or the
cluster's auto-detection, with bounded timeouts (a lost coordinator is an error, not a
hang)."""

import logging
from typing import Optional

import jax

log = logging.getLogger(__name__)


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, auto: bool = False, timeout: int = 300) -> None:
    """No-op for a single process (no flags, auto off)."""
    explicit = (coordinator_address, num_processes, process_id)
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            raise ValueError("multi-host: give all of --coordinator_address, --num_processes and "
                             f"--process_id (got {explicit})")
        if not 0 <= process_id < num_processes:
            raise ValueError(f"--process_id={process_id} not in [0, --num_processes={num_processes})")
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=timeout)
    elif auto:
        jax.distributed.initialize(initialization_timeout=timeout)
    else:
        return
    log.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())
