"""The catalog cannot lie (issue 15): each attack, through the public flows and the stored files.

Every restore that must be refused leaves the target untouched (the state file and the restore
script's output); every retention run leaves the good backup in place, readable and whole.
"""

from __future__ import annotations

import io
import json
import os
from contextlib import redirect_stdout
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flows.backup import backup_all, backup_component
from flows.catalog import main as catalog_main
from flows.maintenance import enforce_retention, verify_backups
from flows.restore import restore_component
from tasks.errors import BadInput, ConfigurationError, IntegrityError
from tasks.ids import new_backup_id
from tasks.models import Manifest
from tasks.operations.recovery import get_recovery_point, list_recovery_points
from tasks.storage.backends import backend_for
from tasks.storage.catalog import get_backup, latest_backup, list_backups, verify_backup
from tasks.storage.health import Status, health_of
from tasks.storage.layout import layout
from tasks.storage.session import BackupSession
from tasks.storage.stores import load_store
from tests.faults.helpers import app_target, dir_state

OLD_STATE = b"the state before any restore\n"
APP = "app-state"


def backup(store, payload: bytes, age: timedelta = timedelta(0), kind: str | None = None) -> Manifest:
    """A real app-state backup (objects, checksums, manifest last) that started `age` ago."""
    session = BackupSession(store, APP, {"kind": kind} if kind else None)
    if age:
        started = datetime.now(UTC) - age
        session.started_at = session.source_time = started
        session.id = new_backup_id(APP, started)
    session.write("sessions", [payload])
    return session.commit()


def flip_object(store, manifest: Manifest) -> None:
    backend = backend_for(store)
    key = manifest.objects[0].key
    data = bytearray(backend.get_bytes(key))
    data[len(data) // 2] ^= 0x01
    backend.put_bytes(key, bytes(data))


@pytest.fixture
def world(local_store, tmp_path, prefect_server):
    """(store, app-state target, state file): restoring writes the state file."""
    store = local_store()
    target = app_target(tmp_path / "steps", mib=1)
    state = tmp_path / "steps" / "sessions.restored"
    state.write_bytes(OLD_STATE)
    return store, target, state


def app_dir(store) -> dict[str, str]:
    return dir_state(Path(store.path) / layout(store).component_dir(APP))


def untouched(state: Path) -> bool:
    return state.read_bytes() == OLD_STATE and not state.with_suffix(".restored.new").exists()


def failed_with(st, error: str, fragment: str) -> None:
    assert st.is_failed(), st
    assert f"{error}: " in st.message, st.message
    assert fragment in st.message, st.message


@pytest.mark.fault(
    "catalog",
    "a backup from a skewed clock (source time two days ahead) beside a damaged newest real one; "
    "the sweep re-reads the newest one",
    "the sweep re-reads the damaged one too ('latest' and retention rely on it, not the future "
    "one) and fails naming it",
)
def test_a_future_dated_backup_does_not_spare_the_real_newest_the_sweep(world):
    store, _target, _state = world
    real = backup(store, b"real")
    session = BackupSession(store, APP)
    session.source_time = datetime.now(UTC) + timedelta(days=2)  # the worker's clock ran ahead
    session.write("sessions", [b"skewed"])
    session.commit()
    flip_object(store, real)
    st = verify_backups(components=[APP], store=store, newest=1, return_state=True)
    failed_with(st, "IntegrityError", f"primary:{real.id}")
    assert health_of(store, APP)[real.id].status == Status.damaged


@pytest.mark.fault(
    "catalog",
    "a good backup's folder copied under another day's folder (a sync tool, a careless hand)",
    "the sweep reports the stray copy; the real backup is not marked damaged: still 'latest', "
    "still the good one retention keeps",
)
def test_a_stray_copy_of_a_backup_folder_does_not_mark_the_real_one_damaged(world):
    store, _target, _state = world
    older = backup(store, b"older", age=timedelta(days=40))
    real = backup(store, b"real", age=timedelta(days=30))
    backend = backend_for(store)
    home = layout(store).manifest_key(real.id)
    stray = home.replace(f"/{real.started_at:%Y-%m-%d}/", "/1999-01-01/")
    backend.put_bytes(stray, backend.get_bytes(home))
    st = verify_backups(components=[APP], store=store, return_state=True)
    failed_with(st, "IntegrityError", stray)
    assert real.id not in health_of(store, APP) or health_of(store, APP)[real.id].status == Status.verified
    assert latest_backup(store, APP).id == real.id
    done = enforce_retention(dry_run=False, store=store, components=[APP])
    assert done["components"][APP]["deleted"] == [older.id]
    assert get_backup(store, real.id).id == real.id


# --- 1. retention and the sweep's findings -----------------------------------------------------


@pytest.mark.fault(
    "catalog",
    "1. the newest backup is damaged (found by the sweep, or by a failed restore); both are past retention",
    "enforce-retention keeps the older good backup (still readable and whole); the damaged one "
    "is never counted as good",
)
@pytest.mark.parametrize("found_by", ["sweep", "restore"])
def test_retention_never_deletes_the_last_good_backup_behind_a_damaged_one(world, found_by):
    store, target, state = world
    good = backup(store, b"good state", age=timedelta(days=40))
    damaged = backup(store, b"newer state", age=timedelta(days=39))
    flip_object(store, damaged)
    if found_by == "sweep":
        st = verify_backups(components=[APP], store=store, return_state=True)
        failed_with(st, "IntegrityError", f"primary:{damaged.id}")
    else:
        st = restore_component(APP, backup_id=damaged.id, target=target, store=store, return_state=True)
        failed_with(st, "IntegrityError", damaged.objects[0].key)
        assert untouched(state)
    assert health_of(store, APP)[damaged.id].status == Status.damaged

    dry = enforce_retention(dry_run=True, store=store, components=[APP])
    assert good.id not in dry["components"][APP]["would_delete"]
    result = enforce_retention(dry_run=False, store=store, components=[APP])
    assert result["components"][APP]["deleted"] == [damaged.id]
    kept = get_backup(store, good.id)
    verify_backup(store, kept)  # every byte still there
    assert [m.id for m in list_backups(store, APP)] == [good.id]


# --- 2. a manifest copied into another backup's folder -----------------------------------------


@pytest.mark.fault(
    "catalog",
    "2. backup B's manifest.json copied over backup A's",
    "restore of A Failed with IntegrityError 'is not the manifest of backup A'; target untouched; "
    "the sweep fails naming A; the catalog lists B once and A as damaged",
)
def test_a_manifest_copied_into_another_backups_folder_is_refused(world, monkeypatch):
    store, target, state = world
    a = backup(store, b"state A")
    b = backup(store, b"state B")
    backend = backend_for(store)
    a_key, b_key = layout(store).manifest_key(a.id), layout(store).manifest_key(b.id)
    backend.put_bytes(a_key, backend.get_bytes(b_key))
    before = app_dir(store)

    st = restore_component(APP, backup_id=a.id, target=target, store=store, return_state=True)
    failed_with(st, "IntegrityError", f"is not the manifest of backup {a.id}: it names backup {b.id}")
    assert untouched(state)
    assert app_dir(store) == before

    st = verify_backups(components=[APP], store=store, return_state=True)
    failed_with(st, "IntegrityError", a_key)
    assert [m.id for m in list_backups(store, APP)] == [b.id]
    assert health_of(store, APP)[a.id].status == Status.damaged
    monkeypatch.delenv("KLB_STORE", raising=False)
    monkeypatch.setenv("KLB_STORE_DIR", store.path)
    out = io.StringIO()
    with redirect_stdout(out):
        assert catalog_main(["list", APP]) == 0
    lines = out.getvalue().splitlines()
    assert sum(line.startswith(b.id) for line in lines) == 1
    assert any(a.id in line and "damaged" in line for line in lines)


# --- 3. bit rot that keeps size and mtime ------------------------------------------------------


@pytest.mark.fault(
    "catalog",
    "3. one bit of a local manifest flipped, its size and mtime put back",
    "the next sweep fails 'was altered: its checksum does not match'; the backup is recorded damaged",
)
def test_bit_rot_with_the_same_size_and_mtime_fails_the_sweep(world):
    store, _target, _state = world
    m = backup(store, b"state")
    assert verify_backups(components=[APP], store=store)[f"primary:{m.id}"]["ok"]
    path = Path(store.path) / layout(store).manifest_key(m.id)
    stat = path.stat()
    data = bytearray(path.read_bytes())
    i = data.index(b'"raw_size"') + 2
    data[i] ^= 0x20  # "raw_size" -> "rAw_size": same length, other content
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    st = verify_backups(components=[APP], store=store, return_state=True)
    failed_with(st, "IntegrityError", "1 backup(s) failed verification")
    assert health_of(store, APP)[m.id].status == Status.damaged


# --- 4. restore options: typos and empty selections --------------------------------------------


@pytest.mark.fault(
    "catalog",
    "4. app-state restore options {'step': [...]} (typo) and {'steps': []} (empty selection)",
    "restore Failed with BadInput naming the option; the target untouched",
)
@pytest.mark.parametrize(
    ("options", "fragment"),
    [({"step": ["sessions"]}, "Extra inputs are not permitted"), ({"steps": []}, "steps=[] selects nothing")],
    ids=["typo", "empty"],
)
def test_restore_options_typo_or_empty_selection_restores_nothing(world, options, fragment):
    store, target, state = world
    m = backup(store, b"state")
    st = restore_component(
        APP, backup_id=m.id, target=target, store=store, options=options, return_state=True
    )
    failed_with(st, "BadInput", fragment)
    assert untouched(state)


# --- 5. flows that would do nothing and say Completed ------------------------------------------


@pytest.mark.fault(
    "catalog",
    "5. backup_all with nothing configured, backup_all(components=[]), verify_backups(newest=0)",
    "each Failed: ConfigurationError 'found no configured component' / BadInput 'components=[] "
    "names no component' / BadInput 'newest must be a whole number >= 1'",
)
def test_flows_that_would_do_nothing_fail(world, monkeypatch):
    store, _target, _state = world
    for name in [k for k in os.environ if k.startswith("KLB_") and k.endswith("_TARGET")]:
        monkeypatch.delenv(name)
    st = backup_all(store=store, return_state=True)
    failed_with(st, "ConfigurationError", "backup-all found no configured component")
    st = backup_all(components=[], store=store, return_state=True)
    failed_with(st, "BadInput", "components=[] names no component")
    st = verify_backups(newest=0, store=store, return_state=True)
    failed_with(st, "BadInput", "newest must be a whole number >= 1")
    st = verify_backups(components=[], store=store, return_state=True)
    failed_with(st, "BadInput", "components=[] names no component")
    assert list_backups(store, APP) == []


# --- 6. a damaged newest recovery point ----------------------------------------------------------


@pytest.mark.fault(
    "catalog",
    "6. the newest recovery point's record altered (not re-sealed)",
    "'latest' fails with IntegrityError naming it and the older point to use by id; "
    "the sweep fails naming it",
)
def test_a_damaged_newest_recovery_point_is_never_skipped_silently(world):
    store, target, _state = world
    first = backup_all(components=[APP], targets={APP: target}, store=store).recovery_point
    second = backup_all(components=[APP], targets={APP: target}, store=store).recovery_point
    assert get_recovery_point(store, "latest").id == second
    key = layout(store).recovery_point_key(second)
    record = json.loads(backend_for(store).get_bytes(key))
    record["failed"] = {"postgres": "edited"}  # altered without re-sealing
    backend_for(store).put_bytes(key, json.dumps(record).encode())

    with pytest.raises(IntegrityError, match=rf"newest recovery point {second} is damaged.*{first}"):
        get_recovery_point(store, "latest")
    assert [p.id for p in list_recovery_points(store)] == [first]
    st = verify_backups(store=store, return_state=True, components=None)
    failed_with(st, "IntegrityError", f"primary:{second}")
    assert get_recovery_point(store, first).id == first  # still usable by id


@pytest.mark.fault(
    "catalog",
    "a member backup of the newest recovery point found damaged by a read (klb verify, a restore), "
    "before any sweep recorded the point itself damaged",
    "'latest' recovery point fails with IntegrityError naming the member and the older point to "
    "use by id (it returned the point, whose restore would fail midway); by id it is still given",
)
def test_a_recovery_point_with_a_member_known_damaged_is_not_latest(world):
    store, target, _state = world
    first = backup_all(components=[APP], targets={APP: target}, store=store).recovery_point
    second = backup_all(components=[APP], targets={APP: target}, store=store).recovery_point
    member = get_backup(store, get_recovery_point(store, second).members[APP].backup_id)
    flip_object(store, member)
    with pytest.raises(IntegrityError, match="sha256"):
        verify_backup(store, member)  # recorded damaged; the point's own record says nothing yet

    with pytest.raises(IntegrityError, match=rf"{second} is damaged \(its {APP} member {member.id}.*{first}"):
        get_recovery_point(store, "latest")
    assert get_recovery_point(store, second).id == second  # by id, as asked


# --- 7. safety backups are never 'latest', never the good one --------------------------------------


@pytest.mark.fault(
    "catalog",
    "7. a pre-restore safety backup (kind=safety) newer than the only routine backup, "
    "which is past retention",
    "'latest' (restore, drills) is the routine backup; the safety one is listed and restorable by id; "
    "retention keeps the routine backup (the safety one does not protect it)",
)
def test_a_safety_backup_is_never_latest_nor_the_good_backup(world):
    store, target, state = world
    routine = backup(store, b"routine state", age=timedelta(days=40))
    safety = backup_component(APP, target=target, store=store, labels={"kind": "safety"})
    assert {m.id: m.kind for m in list_backups(store, APP)} == {routine.id: "on-demand", safety.id: "safety"}
    assert latest_backup(store, APP).id == routine.id
    report = restore_component(APP, backup_id="latest", target=target, store=store)
    assert report["backup_id"] == routine.id and state.read_bytes() == b"routine state"
    result = enforce_retention(dry_run=False, store=store, components=[APP])
    assert result["components"][APP]["deleted"] == []
    verify_backup(store, get_backup(store, routine.id))
    assert restore_component(APP, backup_id=safety.id, target=target, store=store)["backup_id"] == safety.id
    with pytest.raises(BadInput, match="app-state makes no forensic backups"):
        backup(store, b"x", kind="forensic")


# --- 9. errors that escaped as internal exceptions -----------------------------------------------


@pytest.mark.fault(
    "catalog",
    "9. an impossible date in an id, a target or store block of the wrong type, orphan_grace_hours=nan/inf",
    "BadInput / ConfigurationError saying what to do; the target untouched",
)
def test_inputs_that_escaped_as_internal_errors(world):
    from blocks.store import LocalStore

    store, target, state = world
    backup(store, b"state")
    cases = [
        (dict(backup_id="app-state-20260230T120000Z-abcdef"), "BadInput", "impossible date/time"),
        # a block of the wrong type is refused by the flow's typed parameters, before anything runs
        (dict(target=LocalStore(path=store.path)), "ParameterTypeError", "target.AppStateTarget"),
    ]
    for kwargs, error, fragment in cases:
        st = restore_component(APP, **{"target": target, "store": store, **kwargs}, return_state=True)
        failed_with(st, error, fragment)
        assert untouched(state)
    # a target block given as the store: Prefect's parameter check, or ours where a flow takes any Block
    st = restore_component(APP, target=target, store=target, return_state=True)
    assert st.is_failed() and "store.LocalStore: Input should be" in st.message and untouched(state)
    with pytest.raises(ConfigurationError, match="store must be a store block .* not a AppStateTarget"):
        load_store(target)
    for bad in (float("nan"), float("inf")):
        st = enforce_retention(store=store, orphan_grace_hours=bad, return_state=True)
        failed_with(st, "BadInput", "orphan_grace_hours must be a finite number")


@pytest.mark.fault(
    "catalog",
    "9. every doc an error message names",
    "each docs/*.md named in tasks/, flows/, blocks/ exists",
)
def test_every_doc_an_error_names_exists():
    import re

    root = Path(__file__).resolve().parents[2]
    named = set()
    for folder in ("tasks", "flows", "blocks"):
        for path in (root / folder).rglob("*.py"):
            named |= set(re.findall(r"docs/[a-z0-9_-]+\.md", path.read_text()))
    assert named, "no doc named at all?"
    assert sorted(n for n in named if not (root / n).exists()) == []


# --- the retention dry run shows the leftovers of failed writes ---------------------------------------


@pytest.mark.fault(
    "catalog",
    "a partial file of a backup killed 2 days ago (no manifest, no cleanup)",
    "the retention dry run lists it under incomplete_writes_would_remove and changes nothing; "
    "applied, removes it",
)
def test_retention_dry_run_shows_the_leftovers_it_would_sweep(world):
    store, _target, _state = world
    backup(store, b"state")
    old_id = new_backup_id(APP, datetime.now(UTC) - timedelta(days=2))
    folder = Path(store.path) / layout(store).backup_dir(old_id)
    folder.mkdir(parents=True)
    partial = folder / "sessions.partial-0a1b2c3d"
    partial.write_bytes(b"half")
    before = app_dir(store)
    dry = enforce_retention(dry_run=True, store=store, components=[APP])
    assert dry["incomplete_writes_would_remove"] == [str(partial.relative_to(store.path))]
    assert app_dir(store) == before
    enforce_retention(dry_run=False, store=store, components=[APP])
    assert not partial.exists()


@pytest.mark.fault(
    "catalog",
    "a restore by id of a backup whose manifest is fine but whose object is damaged",
    "the failed read is recorded: 'latest' then fails naming it instead of silently using an older one",
)
def test_latest_never_skips_a_damaged_newest_backup_silently(world, monkeypatch):
    store, target, state = world
    older = backup(store, b"older")
    newest = backup(store, b"newest")
    flip_object(store, newest)
    st = restore_component(APP, backup_id=newest.id, target=target, store=store, return_state=True)
    failed_with(st, "IntegrityError", newest.objects[0].key)
    with pytest.raises(IntegrityError, match=rf"newest app-state backup {newest.id} is damaged.*{older.id}"):
        latest_backup(store, APP)
    st = restore_component(APP, target=target, store=store, return_state=True)
    failed_with(st, "IntegrityError", f"restore it by id (backup_id='{older.id}')")
    assert untouched(state)
    monkeypatch.delenv("KLB_STORE", raising=False)
    monkeypatch.setenv("KLB_STORE_DIR", store.path)
    out = io.StringIO()
    with redirect_stdout(out):
        assert catalog_main(["list", APP]) == 0
    line_of = {i: next(x for x in out.getvalue().splitlines() if i in x) for i in (newest.id, older.id)}
    assert "damaged" in line_of[newest.id] and "verified" in line_of[older.id]


@pytest.mark.fault(
    "catalog",
    "a backup started in the same second as the newest readable one, its manifest unreadable "
    "and found damaged by the sweep (ids name the second: which started first is unknown)",
    "'latest' fails naming it, as for one started later, instead of using the readable one silently",
)
def test_a_damaged_backup_of_the_newest_s_second_is_not_passed_over(world):
    store, _target, _state = world
    second = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    made = []
    for payload in (b"one", b"two"):
        session = BackupSession(store, APP)
        session.started_at = session.source_time = second
        session.id = new_backup_id(APP, second)
        session.write("sessions", [payload])
        made.append(session.commit())
    lost, kept = made
    backend_for(store).put_bytes(layout(store).manifest_key(lost.id), b"{ not a manifest")
    st = verify_backups(components=[APP], store=store, return_state=True)
    failed_with(st, "IntegrityError", lost.id)
    assert health_of(store, APP)[lost.id].status == Status.damaged

    with pytest.raises(IntegrityError, match=rf"(?s)newest {APP} backup {lost.id} is damaged.*{kept.id}"):
        latest_backup(store, APP)
