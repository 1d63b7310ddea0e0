"""A restore drill, its record and the manifest index on a store where S3 Object Lock holds every
version (a COMPLIANCE default retention on the bucket plus the store's own lock): nothing the
project writes needs to rewrite a locked version in place."""

from __future__ import annotations

import secrets
from datetime import timedelta

from flows.backup import backup_all
from flows.drill import restore_drill
from sandbox.s3 import make_bucket, s3_store
from tasks.operations.drills import Status, list_drill_records
from tasks.storage.backends.s3_lock import ceil_second
from tasks.storage.index import list_component
from tasks.storage.layout import layout


def test_a_drill_on_an_object_lock_store_passes_and_its_records_are_new_versions(
    moto, prefect_server, prod, drill_tmp
):
    name, client = make_bucket(moto.url, "klb-lock-" + secrets.token_hex(5), object_lock=True)
    rule = {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 30}}
    client.put_object_lock_configuration(
        Bucket=name, ObjectLockConfiguration={"ObjectLockEnabled": "Enabled", "Rule": rule}
    )
    store = s3_store(moto.url, name, object_lock_mode="COMPLIANCE")
    target = prod.target()
    backup_all(components=["app-state"], targets={"app-state": target}, store=store)
    first = list_component(store, "app-state").manifests  # writes the manifest index

    records = [restore_drill(targets={"app-state": target}, store=store) for _ in range(2)]

    assert all(r.passed for r in records), [r.failures for r in records]
    assert all(r.component("app-state").status is Status.verified for r in records)
    assert [r.id for r in list_drill_records(store)][-2:] == [r.id for r in records]
    # the drilled backup is locked to its expiry, objects and manifest alike
    m = first[-1]
    want = ceil_second(m.expires_at + timedelta(days=store.object_lock_margin_days))
    head = client.head_object(Bucket=name, Key=m.objects[0].key, VersionId=m.objects[0].version_id)
    assert (head["ObjectLockMode"], head["ObjectLockRetainUntilDate"]) == ("COMPLIANCE", want)

    # a second backup is listed; the manifest index (a cache keyed on current versions, which a
    # forged later version could poison) is neither read nor written on a locked store
    backup_all(components=["app-state"], targets={"app-state": target}, store=store)
    assert len(list_component(store, "app-state").manifests) == len(first) + 1
    ikey = layout(store).index_key("app-state")
    assert client.list_object_versions(Bucket=name, Prefix=ikey).get("Versions", []) == []
