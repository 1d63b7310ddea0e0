"""Fixtures of the fault suite only: the S3 fault proxy, stores behind it, a tiny full disk,
app-state steps that stream slowly, and snapshots that prove "no change anywhere".

Every test of the suite documents itself for docs/faults.md (scripts/fault_table.py): either a
`@pytest.mark.fault(category, fault, outcome)` marker, or a parameter with `.category`,
`.fault` and `.outcome` attributes (a row of a case table). A test without one fails.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.faults.helpers import make_s3_store
from tests.faults.s3_fault_proxy import S3FaultProxy


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "fault(category, fault, outcome): a fault-suite case, listed in docs/faults.md"
    )


def case_info(item) -> tuple[str, str, str] | None:
    marker = item.get_closest_marker("fault")
    if marker is not None:
        args = list(marker.args) + [marker.kwargs.get(k) for k in ("category", "fault", "outcome")]
        args = [a for a in args if a is not None]
        return tuple(args[:3])  # type: ignore[return-value]
    for value in getattr(getattr(item, "callspec", None), "params", {}).values():
        if all(hasattr(value, a) for a in ("category", "fault", "outcome")):
            return value.category, value.fault, value.outcome
    return None


@pytest.fixture(autouse=True)
def _document_case(request):
    info = case_info(request.node)
    if info is None:
        pytest.fail("a fault-suite test needs @pytest.mark.fault(category, fault, outcome) or a Case param")
    for key, value in zip(("category", "fault", "outcome"), info, strict=True):
        request.node.user_properties.append((key, value))


# --- S3 behind the fault proxy -------------------------------------------------------------


@pytest.fixture
def fault_proxy(moto):
    proxy = S3FaultProxy(moto.port).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def proxied_store(fault_proxy, s3_bucket):
    """An S3Store factory whose endpoint is the fault proxy (fast retries)."""
    name, _ = s3_bucket
    return lambda **kw: make_s3_store(fault_proxy.url, name, **kw)


# --- a really full disk ----------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path):
    """A 4 MiB tmpfs: a real ENOSPC from the kernel. Needs root (the test bench runs as root)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.fail(f"cannot mount a 4 MiB tmpfs (needs root / CAP_SYS_ADMIN): {proc.stderr}", pytrace=False)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def flow_retries_now(monkeypatch):
    """The backup task keeps its retries but without the 10 s / 60 s waits."""
    from tasks.verbs import backup_task

    monkeypatch.setattr(backup_task, "retry_delay_seconds", [0, 0])
