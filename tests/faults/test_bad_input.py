"""Bad input, through the flows' parameters and the blocks: a precise error that says what to do,
no traceback in the flow's failure message, and no change anywhere (stores, bucket, target).

BAD_INPUTS is the table (its last rows, FLOW_INPUTS, are in bad_flow_inputs.py). A component
adds rows: `call(world)` does the bad thing (flows are called with return_state=True),
`error` is the exception class name, `message` a fragment of its message (`{id}`, `{bucket}`,
`{store}` are filled in from the world).
"""

from __future__ import annotations

import logging
import secrets
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prefect.client.schemas.objects import State
from pydantic import SecretStr

from blocks.app_state import AppStateStep, AppStateTarget
from blocks.store import LocalStore, S3Store
from flows.backup import backup_component
from flows.maintenance import verify_backups
from flows.pitr import pitr_postgres
from flows.restore import restore_component
from sandbox.services import free_port
from tasks.storage.catalog import backup_at_or_before
from tasks.storage.session import backup_session
from tests.faults.bad_flow_inputs import FLOW_INPUTS, Bad
from tests.faults.helpers import (
    app_target,
    assert_refused_clearly,
    bucket_state,
    dir_state,
    env,
    make_s3_store,
)
from tests.faults.s3_fault_proxy import Rule

STEP = {"name": "sessions", "backup_command": ["true"], "restore_command": ["true"]}


class Stores:
    """The two local stores (plain, encrypted) with one backup each, made once per module: a
    World gets a copy of each. Writing the encrypted one (scrypt key derivations, ~50 ms each)
    was most of the cost of a World, made anew for each of the ~80 cases."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.key = "enc-" + secrets.token_hex(8)
        self.id = self._take(LocalStore(path=str(root / "store")))
        self.enc_id = self._take(LocalStore(path=str(root / "enc"), encryption_key=SecretStr(self.key)))

    @staticmethod
    def _take(store) -> str:
        with backup_session(store, "app-state") as session:
            session.write("sessions", [b"state of the app\n" * 100])
            return session.commit().id


class World:
    """Two local stores (plain, encrypted) with one backup each, a bucket, a target with state."""

    def __init__(self, request, tmp_path: Path, stores: Stores) -> None:
        self.request, self.tmp = request, tmp_path
        for name in ("store", "enc"):  # this test's own copy: what it does stays in it
            shutil.copytree(stores.root / name, tmp_path / name, symlinks=True)
        self.store = LocalStore(path=str(tmp_path / "store"))
        self.key = stores.key
        self.enc_store = LocalStore(path=str(tmp_path / "enc"), encryption_key=SecretStr(self.key))
        self.target = app_target(tmp_path / "steps")
        self.state = tmp_path / "steps" / "sessions.restored"
        self.state.write_bytes(b"current state\n")
        self.id, self.enc_id = stores.id, stores.enc_id
        self.bucket, self.client = request.getfixturevalue("s3_bucket")
        self.moto = request.getfixturevalue("moto")

    def s3(self, endpoint: str | None = None, **kwargs) -> S3Store:
        return make_s3_store(endpoint or self.moto.url, kwargs.pop("bucket", self.bucket), **kwargs)

    def proxy(self, rule: Rule):
        proxy = self.request.getfixturevalue("fault_proxy")
        proxy.add(rule)
        return proxy

    def snapshot(self) -> dict[str, Any]:
        return {
            "store": dir_state(self.tmp / "store"),
            "enc": dir_state(self.tmp / "enc"),
            "bucket": bucket_state(self.client, self.bucket),
            "target": self.state.read_bytes(),
            "restore-ran": (self.tmp / "steps" / "sessions.restored.new").exists(),
        }

    def backup(self, **kwargs) -> State:
        kwargs.setdefault("target", self.target)
        return backup_component(**{"component": "app-state", **kwargs}, return_state=True)

    def restore(self, **kwargs) -> State:
        kwargs.setdefault("target", self.target)
        kwargs.setdefault("store", self.store)
        return restore_component(**{"component": "app-state", **kwargs}, return_state=True)


def step(**kwargs) -> AppStateStep:
    return AppStateStep(**{**STEP, **kwargs})


def naive_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


OTHER_ID = "etcd-20260101T000000Z-abcdef"
UNKNOWN_ID = "app-state-20200101T000000Z-abcdef"

BAD_INPUTS = [
    # --- components -------------------------------------------------------------------------
    Bad(
        "unknown-component-backup",
        "backup of component 'nope'",
        lambda w: backup_component(component="nope", return_state=True),
        "ParameterTypeError",
        "- component: Input should be 'kubernetes', 'volumes', 'postgres'",
    ),
    Bad(
        "unknown-component-restore",
        "restore of component 'nope'",
        lambda w: restore_component(component="nope", return_state=True),
        "ParameterTypeError",
        "- component: Input should be",
    ),
    Bad(
        "unknown-component-verify",
        "verify-backups of components ['nope']",
        lambda w: verify_backups(components=["nope"], store=w.store, return_state=True),
        "ParameterTypeError",
        "components.0: Input should be",
    ),
    Bad(
        "verify-newest-not-a-number",
        "verify-backups newest='many'",
        lambda w: verify_backups(newest="many", store=w.store, return_state=True),
        "ParameterTypeError",
        "- newest: Input should be a valid integer",
    ),
    # --- backup ids -------------------------------------------------------------------------
    Bad(
        "empty-backup-id",
        "restore backup_id=''",
        lambda w: w.restore(backup_id=""),
        "BadInput",
        "empty backup id: pass an id from the catalog, or 'latest'",
    ),
    Bad(
        "dotdot-backup-id",
        "restore backup_id='../../etc/passwd'",
        lambda w: w.restore(backup_id="../../etc/passwd"),
        "BadInput",
        "malformed backup id '../../etc/passwd': ids look like",
    ),
    Bad(
        "slash-backup-id",
        "restore backup_id='app-state/20260101'",
        lambda w: w.restore(backup_id="app-state/20260101"),
        "BadInput",
        "malformed backup id 'app-state/20260101'",
    ),
    Bad(
        "id-with-traversal-tail",
        "restore backup_id='<a real id>/../../x'",
        lambda w: w.restore(backup_id=f"{w.id}/../../x"),
        "BadInput",
        "malformed backup id '{id}/../../x'",
    ),
    Bad(
        "malformed-backup-id",
        "restore backup_id='app-state-2026-01-01'",
        lambda w: w.restore(backup_id="app-state-2026-01-01"),
        "BadInput",
        "malformed backup id 'app-state-2026-01-01'",
    ),
    Bad(
        "unknown-backup-id",
        f"restore backup_id='{UNKNOWN_ID}' (well-formed, absent)",
        lambda w: w.restore(backup_id=UNKNOWN_ID),
        "NotFound",
        f"no backup {UNKNOWN_ID} in {{store}}: list backups",
    ),
    Bad(
        "other-components-id",
        f"restore app-state from backup_id='{OTHER_ID}'",
        lambda w: w.restore(backup_id=OTHER_ID),
        "BadInput",
        "belongs to component 'etcd', not 'app-state'",
    ),
    Bad(
        "latest-of-nothing",
        "restore 'latest' from a store with no app-state backup",
        lambda w: w.restore(store=LocalStore(path=str(w.tmp / "empty"))),
        "NotFound",
        "no app-state backups in",
    ),
    # --- blocks by name ---------------------------------------------------------------------
    Bad(
        "missing-store-block",
        "store='no-such-store'",
        lambda w: w.backup(store="no-such-store"),
        "ConfigurationError",
        "no store block named 'no-such-store': create one (docs/deployments.md, scripts/create_blocks.py)",
    ),
    Bad(
        "missing-typed-store-block",
        "store='klb-local-store/ghost'",
        lambda w: w.restore(store="klb-local-store/ghost"),
        "ConfigurationError",
        "no store block named 'klb-local-store/ghost'",
    ),
    Bad(
        "missing-target-block",
        "target='ghost-target'",
        lambda w: w.backup(target="ghost-target", store=w.store),
        "ConfigurationError",
        "no app-state target block named 'ghost-target': create a 'klb-app-state-target' block",
    ),
    Bad(
        "no-target-configured",
        "backup with no target and KLB_APP_STATE_TARGET unset",
        lambda w: w.backup(target=None, store=w.store),
        "ConfigurationError",
        "no app-state target: create a 'klb-app-state-target' block",
    ),
    # --- S3 ---------------------------------------------------------------------------------
    Bad(
        "bucket-does-not-exist",
        "an S3 store whose bucket does not exist",
        lambda w: w.backup(store=w.s3(bucket="klb-no-such-bucket")),
        "ConfigurationError",
        "bucket klb-no-such-bucket does not exist: create it or fix the store block",
    ),
    Bad(
        "wrong-access-key",
        "S3 answers 403 InvalidAccessKeyId to the store's key",
        lambda w: w.backup(
            store=w.s3(
                w.proxy(
                    Rule("error", auth="AKIAWRONG", times=None, status=403, code="InvalidAccessKeyId")
                ).url,
                key_id="AKIAWRONG",
            )
        ),
        "ConfigurationError",
        "S3 refused our credentials for s3://{bucket} (InvalidAccessKeyId): renew or fix the AWS "
        "credentials block",
    ),
    Bad(
        "expired-token",
        "S3 answers 403 ExpiredToken to a session token",
        lambda w: w.backup(
            store=w.s3(
                w.proxy(Rule("error", auth="ASIAOLD", times=None, status=403, code="ExpiredToken")).url,
                key_id="ASIAOLD",
                session_token="expired",
            )
        ),
        "ConfigurationError",
        "(ExpiredToken): renew or fix the AWS credentials block",
    ),
    Bad(
        "unreachable-endpoint",
        "an S3 endpoint where nothing listens",
        lambda w: w.backup(store=w.s3(f"http://127.0.0.1:{free_port()}")),
        "ConfigurationError",
        "cannot reach the S3 endpoint for s3://{bucket}",
    ),
    Bad(
        "bucket-without-encryption",
        "require_bucket_encryption on a bucket with no default encryption",
        lambda w: w.backup(store=w.s3(require_bucket_encryption=True)),
        "ConfigurationError",
        "bucket {bucket} has no default encryption and the store block requires it",
    ),
    # --- store blocks -------------------------------------------------------------------------
    Bad(
        "store-prefix-traversal",
        "LocalStore(prefix='../escape')",
        lambda w: LocalStore(path=str(w.tmp / "x"), prefix="../escape"),
        "ValidationError",
        "prefix",
    ),
    Bad(
        "bucket-name-invalid",
        "S3Store(bucket='My_Bucket')",
        lambda w: S3Store(bucket="My_Bucket"),
        "ValidationError",
        "bucket\n  String should match pattern",
    ),
    Bad(
        "kms-key-without-kms",
        "S3Store(kms_key_id=...) with server_side_encryption AES256: the key would go unused",
        lambda w: S3Store(bucket="klb-backups", kms_key_id="alias/backups"),
        "ValidationError",
        "kms_key_id needs server_side_encryption 'aws:kms'",
    ),
    Bad(
        "compression-level-out-of-range",
        "LocalStore(compression_level=99)",
        lambda w: LocalStore(compression_level=99),
        "ValidationError",
        "less than or equal to 19",
    ),
    Bad(
        "gzip-level-out-of-range",
        "LocalStore(compression='gzip', compression_level=12): zlib takes 1 to 9",
        lambda w: LocalStore(compression="gzip", compression_level=12),
        "ValidationError",
        "gzip takes compression_level 1 to 9, not 12",
    ),
    Bad(
        "compression-level-without-compression",
        "LocalStore(compression='none', compression_level=3)",
        lambda w: LocalStore(compression="none", compression_level=3),
        "ValidationError",
        "compression_level needs compression zstd or gzip",
    ),
    Bad(
        "empty-encryption-key",
        "a store whose encryption_key is '' (an unset variable)",
        lambda w: w.backup(store=LocalStore(path=str(w.tmp / "store"), encryption_key=SecretStr(""))),
        "BadInput",
        "the store's encryption_key is empty: set the secret, or remove the field",
    ),
    Bad(
        "wrong-encryption-key",
        "restore an encrypted backup with another key",
        lambda w: w.restore(
            backup_id=w.enc_id, store=w.enc_store.model_copy(update={"encryption_key": SecretStr("other")})
        ),
        "KeyNotHeld",  # an IntegrityError: the manifest's signature names a key this store does not hold
        "is not signed by any key of this store: it is signed with key",
    ),
    Bad(
        "missing-encryption-key",
        "restore an encrypted backup with no key configured",
        lambda w: w.restore(
            backup_id=w.enc_id, store=w.enc_store.model_copy(update={"encryption_key": None})
        ),
        "BadInput",
        "this backup is encrypted: configure the store's encryption_key",
    ),
    # --- app-state steps ----------------------------------------------------------------------
    Bad(
        "step-shell-string",
        "backup_command given as a shell string",
        lambda w: step(backup_command="pg_dump -U app | gzip"),
        "ValidationError",
        "backup_command\n  Input should be a valid list",
    ),
    Bad(
        "step-empty-command",
        "backup_command = []",
        lambda w: step(backup_command=[]),
        "ValidationError",
        "List should have at least 1 item",
    ),
    Bad(
        "step-missing-command",
        "a step without restore_command",
        lambda w: AppStateStep(name="s", backup_command=["true"]),
        "ValidationError",
        "restore_command\n  Field required",
    ),
    Bad(
        "step-duplicate-names",
        "two steps named 'sessions'",
        lambda w: AppStateTarget(steps=[step(), step()]),
        "ValidationError",
        "step names must be unique",
    ),
    Bad(
        "step-unsafe-name",
        "a step named '../../etc/cron.d/x'",
        lambda w: step(name="../../etc/cron.d/x"),
        "ValidationError",
        "invalid object name '../../etc/cron.d/x'",
    ),
    Bad(
        "step-name-with-slash",
        "a step named 'a/b'",
        lambda w: step(name="a/b"),
        "ValidationError",
        "invalid object name 'a/b'",
    ),
    Bad(
        "step-command-not-found",
        "a step whose command does not exist",
        lambda w: w.backup(
            store=w.store, target=AppStateTarget(steps=[step(backup_command=["/nonexistent/dump"])])
        ),
        "ConfigurationError",
        "command not found: /nonexistent/dump (install it or fix the target's command)",
        task_failed=True,
    ),
    Bad(
        "restore-unknown-step",
        "restore options steps=['nope']",
        lambda w: w.restore(backup_id=w.id, options={"steps": ["nope"]}),
        "BadInput",
        "steps ['nope'] are not in both backup {id} and the target",
    ),
    Bad(
        "restore-options-wrong-type",
        "restore options steps='sessions' (not a list)",
        lambda w: w.restore(backup_id=w.id, options={"steps": "sessions"}),
        "BadInput",
        "invalid restore options for app-state",
    ),
    # --- target times -------------------------------------------------------------------------
    Bad(
        "naive-target-time",
        "a target time without a time zone",
        lambda w: backup_at_or_before(w.store, "app-state", naive_now()),
        "BadInput",
        "has no time zone: give one, e.g. '...+00:00' or 'Z'",
    ),
    Bad(
        "target-time-before-window",
        "a target time before the oldest backup (year 2000)",
        lambda w: backup_at_or_before(w.store, "app-state", datetime(2000, 1, 1, tzinfo=UTC)),
        "NotFound",
        "no app-state backup at or before 2000-01-01T00:00:00+00:00; the oldest is",
    ),
    Bad(
        "malformed-target-time",
        "pitr target_time='yesterday at noon'",
        lambda w: pitr_postgres(target_time="yesterday at noon", return_state=True),
        "BadInput",
        "target time 'yesterday at noon' is not a time: write it as YYYY-MM-DDTHH:MM",
    ),
] + FLOW_INPUTS


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> Stores:
    return Stores(tmp_path_factory.mktemp("bad-input-stores"))


@pytest.fixture
def world(request, tmp_path, prefect_server, stores) -> World:
    with env(KLB_APP_STATE_TARGET=""):
        yield World(request, tmp_path, stores)


@pytest.mark.parametrize("case", BAD_INPUTS, ids=lambda c: c.name)
def test_bad_input_is_refused_and_changes_nothing(case: Bad, world: World, caplog):
    caplog.set_level(logging.INFO)
    before = world.snapshot()
    expected = case.message.format(id=world.id, bucket=world.bucket, store=world.store.location)
    assert_refused_clearly(lambda: case.call(world), case.error, expected, caplog)
    after = world.snapshot()
    if case.task_failed:  # exactly one new file: the failed task run's persisted exception
        new = set(after["store"]) - set(before["store"])
        assert len(new) == 1 and next(iter(new)).startswith("backups/_prefect-results/"), new
        after["store"] = {k: v for k, v in after["store"].items() if k not in new}
    assert after == before


@pytest.mark.fault("bad-input", "(meta) the bad-input table itself", f"{len(BAD_INPUTS)} distinct cases")
def test_the_table_has_at_least_25_distinct_cases():
    assert len({c.name for c in BAD_INPUTS}) == len(BAD_INPUTS) >= 25
