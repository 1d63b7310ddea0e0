"""Retention planning: properties over random histories (hypothesis), then rules one by one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.models import Compression, Encryption, Manifest, StoredObject
from tasks.storage.retention import newest_recovery_point, plan_retention
from tasks.storage.retention_types import Action, RetentionPolicy

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
PREFIX = "backups/etcd"


def manifest(
    i: int, age_hours: float, good: bool = True, rp: str | None = None, component: str = "etcd"
) -> Manifest:
    started = NOW - timedelta(hours=age_hours)
    backup_id = f"{component}-{started:%Y%m%dT%H%M%SZ}-{i:06x}"
    key = f"backups/{component}/{started:%Y-%m-%d}/{backup_id}/data"
    obj = StoredObject(
        name="data",
        key=key,
        size=1,
        sha256="0" * 64,
        raw_size=1,
        raw_sha256="0" * 64,
        compression=Compression.none,
        encryption=Encryption.none,
    )
    return Manifest(
        id=backup_id,
        component=component,
        source_time=started,
        started_at=started,
        finished_at=started + timedelta(seconds=5),
        objects=[obj],
        verified_at=started + timedelta(seconds=6) if good else None,
        labels={"recovery_point": rp} if rp else {},
        expires_at=started + timedelta(days=7),
    )


def keys_of(m: Manifest) -> list[str]:
    base = m.objects[0].key.rsplit("/", 1)[0]
    return [f"{base}/data", f"{base}/manifest.json"]


history = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=24 * 60, allow_nan=False),  # age in hours, up to 60 days
        st.booleans(),  # verified
        st.sampled_from([None, None, None, "rp-a", "rp-b"]),
    ),
    max_size=60,
)
in_flight = st.lists(st.floats(min_value=0, max_value=24 * 10, allow_nan=False), max_size=5)


def build(entries, flights):
    manifests = [manifest(i, age, good, rp) for i, (age, good, rp) in enumerate(entries)]
    keys = [k for m in manifests for k in keys_of(m)]
    orphan_dirs = {}
    for j, age in enumerate(flights):
        started = (NOW - timedelta(hours=age)).replace(microsecond=0)  # ids keep whole seconds
        bid = f"etcd-{started:%Y%m%dT%H%M%SZ}-{0xF00000 + j:06x}"
        d = f"{PREFIX}/{started:%Y-%m-%d}/{bid}"
        orphan_dirs[d] = (NOW - started).total_seconds() / 3600
        keys.append(f"{d}/data.partial-part")
    return manifests, keys, orphan_dirs


@settings(max_examples=300, deadline=None)
@given(history, in_flight, st.integers(min_value=1, max_value=4))
def test_plan_properties_over_random_histories(entries, flights, keep_last_good):
    manifests, keys, orphan_dirs = build(entries, flights)
    policy = RetentionPolicy(component="etcd", retention=timedelta(days=7), keep_last_good=keep_last_good)
    plan = plan_retention(manifests, policy, NOW, keys=keys, prefix=PREFIX)
    action = {d.id: d.action for d in plan.decisions}
    assert set(action) == {m.id for m in manifests}  # every backup decided, with a reason
    assert all(d.reason for d in plan.decisions)

    ordered = sorted(manifests, key=lambda m: (m.source_time, m.id))
    good = [m for m in ordered if m.verified_at is not None]
    # never the newest good backup; the newest N good are all kept
    if good:
        assert action[good[-1].id] == Action.keep
    newest_good = {m.id for m in good[-keep_last_good:]}
    assert all(action[i] == Action.keep for i in newest_good)
    assert sum(action[m.id] == Action.keep for m in good) >= min(keep_last_good, len(good))
    # the newest recovery point is kept whole
    rp = newest_recovery_point(manifests)
    for m in manifests:
        if rp and m.labels.get("recovery_point") == rp:
            assert action[m.id] == Action.keep
    # with no good backup, the newest one stands in for it: retention never empties a component
    stand_in = {ordered[-1].id} if ordered and not good else set()
    # everything within the window is kept; everything else past it (not protected) is deleted
    for m in manifests:
        protected = m.id in newest_good | stand_in or (rp and m.labels.get("recovery_point") == rp)
        past = NOW - m.source_time > policy.retention
        assert action[m.id] == (Action.delete if past and not protected else Action.keep)
    # in-flight backups (no manifest) are never deleted within the grace; older orphans are
    deleted_keys = {k for d in plan.deletions for k in d.keys}
    for o in plan.orphans:
        young = orphan_dirs[o.backup_dir] < policy.orphan_grace.total_seconds() / 3600
        assert o.action == (Action.keep if young else Action.delete)
        assert not (set(o.keys) & deleted_keys)
    # a deleted backup loses its manifest first, and only its own keys
    for d in plan.deletions:
        assert d.keys[0].endswith(f"/{d.id}/manifest.json")
        assert all(f"/{d.id}/" in k for k in d.keys)


@settings(max_examples=100, deadline=None)
@given(history, st.integers(0, 5), st.integers(0, 4), st.integers(0, 3))
def test_gfs_tiers_only_add_keeps_and_keep_one_good_per_period(entries, daily, weekly, monthly):
    manifests, keys, _ = build(entries, [])
    base = RetentionPolicy(component="etcd", retention=timedelta(days=7))
    gfs = base.model_copy(update={"keep_daily": daily, "keep_weekly": weekly, "keep_monthly": monthly})
    plain = {d.id: d.action for d in plan_retention(manifests, base, NOW, keys=keys, prefix=PREFIX).decisions}
    tiered = plan_retention(manifests, gfs, NOW, keys=keys, prefix=PREFIX)
    for d in tiered.decisions:
        if d.action == Action.delete:
            assert plain[d.id] == Action.delete  # tiers never delete what the plain plan keeps
        if d.reason.startswith("GFS"):
            assert d.good
    kept_days = {d.source_time.date() for d in tiered.decisions if d.reason == "GFS daily tier"}
    assert len(kept_days) == len([d for d in tiered.decisions if d.reason == "GFS daily tier"])


def test_a_window_of_only_unverified_backups_keeps_the_old_good_one():
    good_old = manifest(1, 24 * 40)
    recent_bad = [manifest(i, i, good=False) for i in range(2, 6)]
    plan = plan_retention([good_old, *recent_bad], RetentionPolicy.from_table("etcd"), NOW)
    by_id = {d.id: d for d in plan.decisions}
    assert by_id[good_old.id].action == Action.keep
    assert "never deleted" in by_id[good_old.id].reason


def test_damaged_backups_do_not_count_as_good():
    old_good, new_damaged = manifest(1, 24 * 40), manifest(2, 24 * 30)
    plan = plan_retention(
        [old_good, new_damaged], RetentionPolicy.from_table("etcd"), NOW, damaged={new_damaged.id}
    )
    by_id = {d.id: d.action for d in plan.decisions}
    assert by_id == {old_good.id: Action.keep, new_damaged.id: Action.delete}


def test_velero_catalog_entries_follow_the_ttl_and_say_so():
    m = manifest(1, 24 * 20, component="kubernetes")
    newer = manifest(2, 1, component="kubernetes")
    m_ttl_pending = m.model_copy(update={"expires_at": NOW + timedelta(days=1)})
    plan = plan_retention([m_ttl_pending, newer], RetentionPolicy.from_table("kubernetes"), NOW)
    assert plan.decisions[0].action == Action.keep and "Velero TTL" in plan.decisions[0].reason
    plan = plan_retention([m, newer], RetentionPolicy.from_table("kubernetes"), NOW)
    assert plan.decisions[0].action == Action.delete and "catalog entry only" in plan.decisions[0].reason


def test_keys_of_other_shapes_are_left_alone():
    m = manifest(1, 24 * 40)
    stray = [f"{PREFIX}/README", f"{PREFIX}/2026-01-01/not-a-backup/x"]
    plan = plan_retention(
        [m, manifest(2, 1)], RetentionPolicy.from_table("etcd"), NOW, keys=stray, prefix=PREFIX
    )
    assert all(k not in d.keys for d in plan.deletions for k in stray)
    assert [o.action for o in plan.orphans] == [Action.keep]  # the malformed id: not ours


def test_the_plan_artifact_names_every_deletion_and_says_dry_run():
    from tasks.storage.retention_report import plan_markdown

    old, new = manifest(1, 24 * 40), manifest(2, 1)
    plan = plan_retention([old, new], RetentionPolicy.from_table("etcd"), NOW)
    text = plan_markdown([plan], dry_run=True)
    assert "DRY RUN: nothing was deleted" in text
    assert f"| etcd | {old.id} |" in text and "past retention" in text
    assert "| etcd | 2 | 1 | 1 | 0 | 0 |" in text


# --- issue 15: what the sweep found, and the kinds of backup -------------------------------------

POLICY = RetentionPolicy(component="etcd", retention=timedelta(days=7))


def _kind(m: Manifest, kind: str) -> Manifest:
    return m.model_copy(update={"labels": {**m.labels, "kind": kind}})


@settings(max_examples=200, deadline=None)
@given(history, st.data())
def test_a_damaged_or_special_backup_never_stands_in_for_the_newest_good_one(entries, data):
    """Whatever is damaged and whatever is a safety/forensic backup, the newest routine backup
    that is verified and not damaged is kept."""
    manifests = [manifest(i, age, good, rp) for i, (age, good, rp) in enumerate(entries)]
    damaged = {m.id for m in manifests if data.draw(st.booleans())}
    manifests = [
        _kind(m, data.draw(st.sampled_from(["on-demand", "scheduled", "safety", "forensic"])))
        for m in manifests
    ]
    plan = plan_retention(manifests, POLICY, NOW, damaged=damaged)
    action = {d.id: d.action for d in plan.decisions}
    good = sorted(
        (m for m in manifests if m.routine and m.verified_at and m.id not in damaged),
        key=lambda m: (m.source_time, m.id),
    )
    if good:
        assert action[good[-1].id] == Action.keep
    for m in manifests:
        if not m.routine:  # their own window only
            assert (action[m.id] == Action.keep) == (NOW - m.source_time <= POLICY.retention)


def test_the_sweeps_verdict_and_a_newer_safety_backup_do_not_cost_the_old_good_backup():
    old_good = manifest(1, 24 * 30)
    damaged = manifest(2, 24 * 29)
    safety = _kind(manifest(3, 24 * 28), "safety")
    plan = plan_retention([old_good, damaged, safety], POLICY, NOW, damaged=[damaged.id])
    by_id = {d.id: d for d in plan.decisions}
    assert by_id[old_good.id].action == Action.keep and by_id[old_good.id].good
    assert by_id[damaged.id].action == Action.delete and "found damaged" in by_id[damaged.id].reason
    assert by_id[safety.id].action == Action.delete and by_id[safety.id].kind == "safety"
    longer = RetentionPolicy(
        component="etcd", retention=timedelta(days=7), special_retention=timedelta(days=60)
    )
    assert {d.id: d.action for d in plan_retention([old_good, safety], longer, NOW).decisions}[
        safety.id
    ] == Action.keep


def test_a_backup_from_the_future_never_stands_in_for_the_newest_good_one():
    """A clock 30 days ahead stamped the newest backup: `latest` never picks it (clock skew), so
    it must not be the good backup that lets retention delete the one `latest` does pick."""
    old_good, future = manifest(1, 24 * 20), manifest(2, -24 * 30)
    plan = plan_retention([old_good, future], POLICY, NOW)
    by_id = {d.id: d for d in plan.decisions}
    assert by_id[old_good.id].action == Action.keep and by_id[old_good.id].good
    assert by_id[future.id].action == Action.keep and not by_id[future.id].good
    assert "future" in by_id[future.id].reason


def test_with_no_good_backup_the_newest_is_kept_and_never_a_damaged_one():
    """Nothing verified (verify_after_write off, no sweep yet) and everything past the window:
    retention alone must not leave the component with nothing to restore."""
    older, newer, damaged = (
        manifest(1, 24 * 50, good=False),
        manifest(2, 24 * 40, good=False),
        manifest(3, 24 * 35),
    )
    plan = plan_retention(
        [older, newer, damaged], RetentionPolicy.from_table("etcd"), NOW, damaged={damaged.id}
    )
    by_id = {d.id: d for d in plan.decisions}
    assert by_id[newer.id].action == Action.keep and "no good" in by_id[newer.id].reason
    assert by_id[older.id].action == by_id[damaged.id].action == Action.delete


def test_a_backup_whose_objects_are_gone_never_stands_in_for_the_good_one():
    """The newest backup's data was deleted behind its manifest (by hand, a lifecycle rule):
    the listing shows it, so the older good backup is the one kept."""
    old_good, emptied = manifest(1, 24 * 40), manifest(2, 24 * 30)
    keys = keys_of(old_good) + [k for k in keys_of(emptied) if k.endswith("manifest.json")]
    plan = plan_retention(
        [old_good, emptied], RetentionPolicy.from_table("etcd"), NOW, keys=keys, prefix=PREFIX
    )
    by_id = {d.id: d for d in plan.decisions}
    assert by_id[old_good.id].action == Action.keep and "never deleted" in by_id[old_good.id].reason
    assert by_id[emptied.id].action == Action.delete and "objects missing (data)" in by_id[emptied.id].reason
    assert not by_id[emptied.id].good
    # a pinned version gone as well is missing like any other object (the listing, from
    # index.list_component, holds the keys whose pinned version outlives a delete marker)
    pinned = emptied.model_copy(
        update={"objects": [emptied.objects[0].model_copy(update={"version_id": "v1"})]}
    )
    plan = plan_retention(
        [old_good, pinned], RetentionPolicy.from_table("etcd"), NOW, keys=keys, prefix=PREFIX
    )
    assert not {d.id: d.good for d in plan.decisions}[pinned.id]
    plan = plan_retention(
        [old_good, pinned],
        RetentionPolicy.from_table("etcd"),
        NOW,
        keys=keys_of(old_good) + keys_of(pinned),
        prefix=PREFIX,
    )
    assert {d.id: d.good for d in plan.decisions}[pinned.id]


def test_the_newest_good_backup_of_each_database_is_kept():
    """A one-database backup (before a migration) is newer than the last full one: database b's
    only copy is in the full one, past the window with it."""

    def with_databases(m: Manifest, *dbs: str) -> Manifest:
        objs = [
            m.objects[0].model_copy(update={"name": f"db-{i:03d}-{db}", "meta": {"database": db}})
            for i, db in enumerate(dbs)
        ]
        return m.model_copy(update={"objects": objs})

    full = with_databases(manifest(1, 24 * 50, component="postgres"), "a", "b")
    only_a = with_databases(manifest(2, 24 * 40, component="postgres"), "a")
    newer_full = with_databases(manifest(3, 24 * 35, component="postgres"), "b", "a")
    plan = plan_retention([full, only_a], RetentionPolicy.from_table("postgres"), NOW)
    by_id = {d.id: d for d in plan.decisions}
    assert by_id[full.id].action == Action.keep and "of b" in by_id[full.id].reason
    # once a newer backup holds b (at another position: objects are named by position), it goes
    plan = plan_retention([full, only_a, newer_full], RetentionPolicy.from_table("postgres"), NOW)
    assert [d.id for d in plan.deletions] == [full.id, only_a.id]


def test_the_newest_good_backup_of_each_namespace_is_kept():
    """A Velero target narrowed to one namespace (an on-demand backup before a change there)
    backs up into the same catalog: after a run of failed backups longer than the window, the
    last full backup is the only copy of the other namespaces."""

    def with_namespaces(m: Manifest, *namespaces: str) -> Manifest:
        return m.model_copy(
            update={"engine": {"velero_backup": m.id.lower(), "namespaces": list(namespaces)}}
        )

    policy = RetentionPolicy.from_table("kubernetes")
    full = with_namespaces(manifest(1, 24 * 50, component="kubernetes"), "lambda-system", "database")
    only_lambda = with_namespaces(manifest(2, 24 * 40, component="kubernetes"), "lambda-system")
    plan = plan_retention([full, only_lambda], policy, NOW)
    by_id = {d.id: d for d in plan.decisions}
    assert by_id[full.id].action == Action.keep and "namespace database" in by_id[full.id].reason
    assert by_id[full.id].protected and by_id[only_lambda.id].protected
    newer_full = with_namespaces(manifest(3, 24 * 35, component="kubernetes"), "database", "lambda-system")
    plan = plan_retention([full, only_lambda, newer_full], policy, NOW)
    assert [d.id for d in plan.deletions] == [full.id, only_lambda.id]


def test_the_newest_good_backup_of_each_vhost_is_kept():
    """A RabbitMQ target narrowed to some vhosts names its objects by position (vhost-000.json):
    a newer backup of vhost billing must not cost vhost orders its only copy, and a newer backup
    of the whole broker (it restores any vhost) lets the old one go."""

    def with_vhosts(m: Manifest, *vhosts: str, broker: bool = False) -> Manifest:
        if broker:
            obj = m.objects[0].model_copy(update={"name": "definitions.json", "meta": {"scope": "broker"}})
            engine = {"scope": "broker", "vhost_metadata": {v: {} for v in vhosts}}
            return m.model_copy(update={"objects": [obj], "engine": engine})
        objs = [
            m.objects[0].model_copy(
                update={"name": f"vhost-{i:03d}.json", "meta": {"scope": "vhost", "vhost": v}}
            )
            for i, v in enumerate(vhosts)
        ]
        engine = {"scope": "vhosts", "vhosts": list(vhosts), "vhost_metadata": {v: {} for v in vhosts}}
        return m.model_copy(update={"objects": objs, "engine": engine})

    policy = RetentionPolicy.from_table("rabbitmq")
    orders = with_vhosts(manifest(1, 24 * 50, component="rabbitmq"), "orders")
    billing = with_vhosts(manifest(2, 24 * 40, component="rabbitmq"), "billing")
    plan = plan_retention([orders, billing], policy, NOW)
    by_id = {d.id: d for d in plan.decisions}
    assert by_id[orders.id].action == Action.keep and "vhost orders" in by_id[orders.id].reason
    broker = with_vhosts(manifest(3, 24 * 35, component="rabbitmq"), "orders", "billing", broker=True)
    plan = plan_retention([orders, billing, broker], policy, NOW)
    assert [d.id for d in plan.deletions] == [orders.id, billing.id]


def test_a_newer_backup_narrowed_by_labels_or_resources_never_costs_the_full_one():
    """A Velero backup of the same namespaces narrowed to some labels or resources (an on-demand
    one before a change) is no copy of the rest of them: 'latest' of the whole component passes
    over it, so retention must keep the full one it would fall back to. A newer full one (it
    restores any narrower scope) lets both go."""

    def scoped(m: Manifest, **narrowed) -> Manifest:
        scope = {"include_namespaces": ["app"], "exclude_namespaces": [], "include_resources": []}
        scope |= {"exclude_resources": [], "label_selector": {}} | narrowed
        return m.model_copy(update={"engine": {"namespaces": ["app"], "scope": scope}})

    policy = RetentionPolicy.from_table("kubernetes")
    full = scoped(manifest(1, 24 * 50, component="kubernetes"))
    labelled = scoped(manifest(2, 24 * 45, component="kubernetes"), label_selector={"app": "web"})
    configmaps = scoped(manifest(3, 24 * 40, component="kubernetes"), include_resources=["configmaps"])
    plan = plan_retention([full, labelled, configmaps], policy, NOW)
    by_id = {d.id: d for d in plan.decisions}
    assert by_id[full.id].action == Action.keep and "namespace app" in by_id[full.id].reason
    assert by_id[labelled.id].action == Action.keep  # nor does one resource cost the labelled one
    newer_full = scoped(manifest(4, 24 * 35, component="kubernetes"))
    plan = plan_retention([full, labelled, configmaps, newer_full], policy, NOW)
    assert [d.id for d in plan.deletions] == [full.id, labelled.id, configmaps.id]


def test_pitr_keeps_the_base_backup_before_the_window_so_recovery_reaches_back_all_of_it():
    # daily base backups for 40 days, 30 days' retention: a time 29.99 days ago is only reached
    # by replaying WAL from a base backup older than 30 days (daily[30], 30 days and 30 min old)
    daily = [manifest(i, 24 * i + 0.5, component="postgres-pitr") for i in range(40)]
    damaged = daily[30].id  # the newest one before the window is damaged: the one before it serves
    plan = plan_retention(daily, RetentionPolicy.from_table("postgres-pitr"), NOW, damaged={damaged})
    kept = {d.id: d for d in plan.decisions if d.action == Action.keep}
    assert set(kept) == {m.id for m in daily[:30]} | {daily[31].id}
    assert "replays WAL" in kept[daily[31].id].reason and kept[daily[31].id].protected
    # components without a recovery window keep nothing past their retention
    etcd = [manifest(i, 24 * i + 0.5) for i in range(40)]
    plan = plan_retention(etcd, RetentionPolicy.from_table("etcd"), NOW)  # 7 days (backup-table)
    assert {d.id for d in plan.decisions if d.action == Action.keep} == {m.id for m in etcd[:7]}
