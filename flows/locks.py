"""One operation per component at a time: never a restore and a backup of the same component at once.

Deployment `concurrency_limit`s (prefect.yaml) keep one run per *deployment*; a backup deployment
and a restore deployment of the same component are different deployments, so they cannot see
each other. This lock is a Prefect global concurrency limit named `klb-component-<group>`
with one slot, held by whichever flow touches the component (backup, restore, rollback); the
components of one system share it (the registry's lock_group). It is
created on first use (idempotent; `scripts/create_blocks.py` creates them up front too) and
taken with `strict=True`, so a missing or unreachable limit fails the run instead of running
unlocked. A full cluster restore also holds `klb-full-cluster-restore` from its first step to
its last (full_restore_lock): one such run at a time.

`kubernetes` and `volumes` are one group (`klb-component-kubernetes`), not two locks. Whatever
changes the cluster for one of them changes what the other's backup reads: data_corruption
scales the apps to zero and deletes claims (a kubernetes backup then held Deployments at 0
replicas, verified, and became `latest`), namespace_corruption deletes a namespace with its
claims (a volumes backup then held none of them), a full-cluster restore makes the claims empty
before its volumes step fills them, a drill of either restores into `restore-drill-*` namespaces
of the live cluster with the apps at 0 (flows/drill.py holds the lock for it). Two locks would
mean every such operation takes both, in one order everywhere; one lock gives the same exclusion
with no order to keep. The price is that a kubernetes and a volumes backup never run together;
they are Velero backups of the same namespaces on the same Velero server, which runs one backup
at a time anyway (before 1.18; its concurrent mode still serialises backups whose namespaces
overlap). Their schedules
(backup-table.yaml: kubernetes at :15 every 2 h, volumes at 03:00) meet only when a volumes backup
runs past 04:15 (or a kubernetes one past 03:00): the later one then waits, and logs it (below).

A full-cluster restore holds the Kubernetes group from its first step to its last
(held_through): between its kubernetes and volumes steps the claims exist, empty or with the
kubernetes backup's data, and a volumes backup there verified and became `latest`. Its steps take
the group again (component_lock) without a second slot, which with one slot would wait for
itself; only a hold made with held_through is entered again so, and only by its own thread: a
component_lock inside a component_lock of the same group still waits (another run's, in tests).

A restore that scales apps to zero for another component (postgres's quiesce_namespace) holds
the Kubernetes group too, taken first (component_lock's options): the one order in which any flow
holds two groups.

A run that has to wait says so in its log: which lock, who holds it, and how long it may wait.

A crashed holder (its process killed, its machine gone) frees the slot by itself within about a
minute: the slot is held under a lease of LEASE_SECONDS (60 s, the shortest the Prefect server
accepts) that a thread of the live holder renews every 45 s; once renewals stop, the server's
repossessor (every 15 s by default) revokes the expired lease. Prefect's default lease is 300 s,
which made the next backup of the component wait five minutes behind a dead holder.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.services import ConcurrencySlotAcquisitionWithLeaseService
from prefect.concurrency.sync import concurrency
from prefect.exceptions import MissingContextError, ObjectAlreadyExists, ObjectNotFound
from prefect.logging import get_logger, get_run_logger
from prefect.settings import PREFECT_API_URL

from tasks.components.registry import SPECS, spec
from tasks.errors import ConfigurationError, TransientError

PREFIX = "klb-component-"
FULL_RESTORE_LOCK = "klb-full-cluster-restore"
DEFAULT_WAIT_SECONDS = 6 * 3600  # a restore waits for a running backup; longer means stuck
LEASE_SECONDS = 60  # the server's minimum: a dead holder's slot is free again about a minute later


def lock_name(component: str) -> str:
    """Components of one system share a lock (the registry's lock_group)."""
    return PREFIX + spec(component).lock_group


def sharing(component: str) -> list[str]:
    """The components whose lock `component` shares (itself included), in registry order."""
    group = spec(component).lock_group
    return [name for name, row in SPECS.items() if row.lock_group == group]


def ensure_component_limit(component: str) -> bool:
    """Create `klb-component-<group>` (limit 1) if missing; refuse one that lost its meaning.
    Returns whether its slot was taken when read (a run about to wait for it)."""
    return _ensure_limit(lock_name(component), f"a backup and a restore of {component} could run at once")


def _ensure_limit(name: str, else_: str) -> bool:
    with get_client(sync_client=True) as client:
        try:
            found = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with suppress(ObjectAlreadyExists):  # another run may have created it first
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            return False
    if found.limit != 1 or not found.active:
        raise ConfigurationError(
            f"global concurrency limit {name!r} must be active with limit 1 (it is "
            f"limit={found.limit}, active={found.active}): otherwise {else_}. "
            f"Fix it: `prefect gcl update {name} --limit 1 --enable`"
        )
    return found.active_slots >= found.limit


_api_lock = threading.Lock()
_api_used: str | None = None  # the Prefect API this process last took a component lock on


def _same_api_as_last_time() -> None:
    """Prefect keeps one slot-acquiring service per limit name, and the service keeps the client
    of the API it started with: a process that switches PREFECT_API_URL (a notebook going from
    staging to production, `temporary_settings`) would take the lock on the first server, where
    it means nothing for the second. So when the API changes, the services are drained first and
    the next acquisition starts one with a client of the current API."""
    global _api_used
    url = str(PREFECT_API_URL.value() or "")
    with _api_lock:
        if _api_used is not None and _api_used != url:
            ConcurrencySlotAcquisitionWithLeaseService.drain_all(timeout=30, at_exit=False)
        _api_used = url


def wait_seconds() -> float:
    return float(os.environ.get("KLB_COMPONENT_LOCK_WAIT_SECONDS", DEFAULT_WAIT_SECONDS))


_through = threading.local()  # names of the locks this thread holds through held_through


@contextmanager
def component_lock(
    component: str, timeout_seconds: float | None = None, options: Any = None
) -> Iterator[None]:
    """Hold the component's slot for the block; wait up to `timeout_seconds` for it. Inside
    held_through of its group, in the same thread: entered at once, no second slot.

    `options`: a restore's options. One that scales a namespace's apps to zero (postgres's
    quiesce_namespace) holds the Kubernetes group too: a kubernetes backup in that window
    captured Deployments at 0 replicas and became `latest`. Two groups are always taken in one
    order, the Kubernetes group first (as a full-cluster restore does around its databases step),
    and no flow takes it while holding another group: no two runs wait for each other."""
    component = str(component)
    if scales_apps(options) and lock_name(component) != lock_name("kubernetes"):
        with _one_lock("kubernetes", timeout_seconds), _one_lock(component, timeout_seconds):
            yield
    else:
        with _one_lock(component, timeout_seconds):
            yield


@contextmanager
def _one_lock(component: str, timeout_seconds: float | None) -> Iterator[None]:
    name = lock_name(component)
    if name in getattr(_through, "names", ()):
        yield
        return
    _same_api_as_last_time()
    taken = ensure_component_limit(component)
    members = sharing(component)
    busy = "another backup/restore of " + " or ".join(members)
    where = "the runs tagged " + " or ".join(f"component:{m}" for m in members)
    with _held(name, timeout_seconds, busy, where, taken):
        yield


QUIESCE_OPTION = "quiesce_namespace"  # a restore option that scales a namespace's apps to zero


def scales_apps(options: Any) -> bool:
    """Whether a restore with these options scales a namespace's apps to zero for its duration."""
    value = (
        options.get(QUIESCE_OPTION) if isinstance(options, dict) else getattr(options, QUIESCE_OPTION, None)
    )
    return bool(value)


@contextmanager
def held_through(component: str, timeout_seconds: float | None = None) -> Iterator[None]:
    """component_lock for a run of steps that each take the same lock again (a full-cluster
    restore): held from the first to the last, never free in between."""
    name = lock_name(str(component))
    with component_lock(component, timeout_seconds):
        names = getattr(_through, "names", None)
        if names is None:
            names = _through.names = set()
        if name in names:  # within a held_through of its own: the outer one ends it
            yield
            return
        names.add(name)
        try:
            yield
        finally:
            names.discard(name)


@contextmanager
def full_restore_lock(timeout_seconds: float | None = None) -> Iterator[None]:
    """One full cluster restore at a time: its steps take each component's lock in turn, so two
    runs (two recovery points, or two resumes of one run) would otherwise interleave step by
    step and leave the cluster a mix of both."""
    _same_api_as_last_time()
    taken = _ensure_limit(FULL_RESTORE_LOCK, "two full cluster restores could interleave")
    busy, where = "another full cluster restore", "the full-cluster-restore runs"
    with _held(FULL_RESTORE_LOCK, timeout_seconds, busy, where, taken):
        yield


def _log():
    """The run's own logger (its log in the Prefect UI), or the module's outside a run."""
    try:
        return get_run_logger()
    except MissingContextError:
        return get_logger("klb.locks")


@contextmanager
def _held(name: str, timeout_seconds: float | None, busy: str, where: str, taken: bool) -> Iterator[None]:
    """`taken`: the slot was held when the limit was read just before, so this run will wait:
    its log says for what and how long, before it waits, and how long it waited, after."""
    timeout = wait_seconds() if timeout_seconds is None else timeout_seconds
    acquired = False
    log = _log()
    if taken:
        log.warning(
            "waiting for lock %s: %s holds it (see %s); this run goes on once it is free, or gives "
            "up after %.0fs (KLB_COMPONENT_LOCK_WAIT_SECONDS)",
            name,
            busy,
            where,
            timeout,
        )
    started = time.monotonic()
    try:
        # raise_on_lease_renewal_failure=False: a blip in the API must not kill a restore halfway
        # through a cut-over; the lease is renewed again on the next beat.
        with concurrency(
            name,
            occupy=1,
            timeout_seconds=timeout,
            lease_duration=LEASE_SECONDS,
            strict=True,
            raise_on_lease_renewal_failure=False,
        ):
            acquired = True
            if taken:
                log.warning("holding %s after waiting %.0fs for it", name, time.monotonic() - started)
            else:
                log.info("holding %s", name)
            yield
    except TimeoutError:
        if acquired:  # the work itself timed out: not ours to explain
            raise
        raise TransientError(
            f"{busy} held {name} for more than {timeout:.0f}s: check {where} in the Prefect UI"
        ) from None
