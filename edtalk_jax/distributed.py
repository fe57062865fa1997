"""Multi-process start-up: `jax.distributed.initialize` from explicit flags or the
cluster's auto-detection, with bounded timeouts (a lost coordinator is an error, not a
hang).

A process other than 0 first waits (at most `timeout` seconds) for the coordinator's port
to accept a connection, so an unreachable coordinator ends it with a `CoordinatorError`
naming the address. Failures jax detects later (a process that never joins, one that
dies during training) end every process through XLA's coordination service with a
`DEADLINE_EXCEEDED` / "another task died" log line and SIGABRT, after the timeout or
the service's heartbeat timeout, not a hang.
"""

import logging
import socket
import time
from typing import Optional

import jax

log = logging.getLogger(__name__)


class CoordinatorError(RuntimeError):
    """The coordinator could not be reached within the initialization timeout."""


def _host_port(address: str):
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"--coordinator_address={address!r}: expected host:port")
    return host.strip("[]"), int(port)


def wait_for_coordinator(address: str, timeout: float, poll: float = 0.5) -> float:
    """Seconds left of `timeout` once `address` accepts a TCP connection; CoordinatorError
    naming the address when nothing answers in time."""
    host, port = _host_port(address)
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(5.0, left))):
                return max(0.0, deadline - time.monotonic())
        except OSError as e:
            error = e
        if time.monotonic() + poll >= deadline:
            raise CoordinatorError(
                f"no coordinator answered at --coordinator_address={address} within "
                f"--initialization_timeout={timeout:g} s ({error}); is process 0 running, and is "
                "that host:port reachable from this host?")
        time.sleep(poll)


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, auto: bool = False, timeout: int = 300) -> None:
    """No-op for a single process (no flags, auto off)."""
    explicit = (coordinator_address, num_processes, process_id)
    if timeout < 1:
        raise ValueError(f"--initialization_timeout={timeout}: must be >= 1 second")
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            raise ValueError("multi-host: give all of --coordinator_address, --num_processes and "
                             f"--process_id (got {explicit})")
        if not 0 <= process_id < num_processes:
            raise ValueError(f"--process_id={process_id} not in [0, --num_processes={num_processes})")
        _host_port(coordinator_address)
        log.info("process %d of %d: joining %s (waiting at most %d s for the others)", process_id,
                 num_processes, coordinator_address, timeout)
        if process_id != 0:  # process 0 starts the service; the others must reach it
            timeout = max(1, int(wait_for_coordinator(coordinator_address, timeout)))
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=timeout)
    elif auto:
        jax.distributed.initialize(initialization_timeout=timeout)
    else:
        return
    log.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())
