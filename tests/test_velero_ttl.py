"""The TTL the project gives a Velero backup is the one Velero applies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tasks.components import kubernetes as velero
from tasks.storage.session import backup_session
from tests.k8s_helpers import seed_namespaces


@pytest.mark.parametrize("hours", [0.5, 1.5])
def test_a_ttl_of_part_of_an_hour_is_kept(kube_api, ctl, local_store, hours):
    """ttl_hours was cut to whole hours: 0.5 became "0h0m0s", which Velero reads as no TTL and
    replaces with its default of 30 days (backup_controller.go), and 1.5 expired half an hour
    before the block said."""
    (ns,) = seed_namespaces(ctl, "ttl")
    target = kube_api.velero_target(include_namespaces=[ns], ttl_hours=hours)
    with backup_session(local_store(), "kubernetes") as session:
        velero.backup(target, session)
        session.commit()
    expiration = datetime.strptime(session.manifest.engine["expiration"], "%Y-%m-%dT%H:%M:%SZ")
    left = expiration.replace(tzinfo=UTC) - datetime.now(UTC)
    assert abs(left - timedelta(hours=hours)) < timedelta(minutes=1)
