"""Shared test fixtures.

Tests read reference data from ../shared (parity fixtures, sample media). When it is
missing the tests FAIL rather than skip: CI must never go green without the golden data.
"""

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("EDTALK_SHARED", REPO.parent / "shared"))


def fake_devices_env(n: int, **extra: str) -> dict[str, str]:
    """Environment for a subprocess with n fake CPU devices.

    XLA:CPU runs in-process collectives on its intra-op thread pool, and a waiting
    participant blocks its thread. Collectives are only ordered by *scheduling* edges
    (the next may start once the previous has started), so a fast device can hold
    several blocked threads at once. The pool has max(cores, devices) threads by
    default (8 here): the 8-device sharded test then starved (4 devices blocked in two
    all-gathers each, the other 4 without a thread; CI, 2026-11-29). NPROC, which XLA
    reads for the pool size, is raised to 8 threads per device. A stuck collective still
    aborts the process after 120 s (XLA's default 40 s is too short on 2 shared cores),
    so a real deadlock stays a failure, not a hang."""
    flags = (f"--xla_force_host_platform_device_count={n} "
             "--xla_cpu_collective_call_terminate_timeout_seconds=120")
    return dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu", NPROC=str(8 * n), **extra)


def _require(path: pathlib.Path) -> pathlib.Path:
    if not path.exists():
        pytest.fail(f"reference data missing: {path} (set EDTALK_SHARED to the shared/ folder)")
    return path


@pytest.fixture(scope="session")
def parity_dir() -> pathlib.Path:
    """../shared/fixtures/parity: official-layout checkpoints and golden outputs."""
    return _require(SHARED / "fixtures" / "parity")


@pytest.fixture(scope="session")
def samples_dir() -> pathlib.Path:
    """../shared/data/edtalk_samples: real sample media (Apache-2.0)."""
    return _require(SHARED / "data" / "edtalk_samples")


@pytest.fixture(scope="session")
def torch():
    """PyTorch, for tests that write .pt files the way users' tools do. It is part of the
    README's test install (`pip install torch==2.13.0 ...`); missing torch fails these tests."""
    try:
        import torch as _torch
    except ImportError:
        pytest.fail("this test needs torch: pip install 'edtalk-jax[torch]' (here: pip install torch==2.13.0)")
    return _torch
