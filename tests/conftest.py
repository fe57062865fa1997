"""Shared test fixtures.

Tests read reference data from ../shared (parity fixtures, sample media). When it is
missing the tests FAIL rather than skip: CI must never go green without the golden data.
"""

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("EDTALK_SHARED", REPO.parent / "shared"))


def fake_devices_flags(n: int) -> str:
    """XLA_FLAGS for a subprocess with n fake CPU devices. On 2 shared cores one device's
    thread can reach a collective long before the others; XLA:CPU aborts the process after
    40 s by default, raised here to 120 s. (Since the CPU conv VJPs the 8-device sharded
    test can also hang there: a deadlock, not slowness; the bound keeps it a failure.)"""
    return (f"--xla_force_host_platform_device_count={n} "
            "--xla_cpu_collective_call_terminate_timeout_seconds=120")


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
