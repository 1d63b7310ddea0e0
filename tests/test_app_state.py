"""Application state from the operator's scripts: real tar, real sh, real files."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from blocks.app_state import AppStateStep, AppStateTarget
from tasks.errors import BadInput, ComponentFailed, ConfigurationError
from tasks.storage.backends import backend_for
from tasks.storage.catalog import list_backups
from tasks.verbs import backup_task, restore_task


def tree(root: Path) -> dict[str, tuple[str, int, str]]:
    """Every entry under root: kind, permission bits, and content sha256 (or link target)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        st = path.lstat()
        if path.is_symlink():
            out[rel] = ("link", 0, os.readlink(path))
        elif path.is_dir():
            out[rel] = ("dir", stat.S_IMODE(st.st_mode), "")
        else:
            out[rel] = ("file", stat.S_IMODE(st.st_mode), hashlib.sha256(path.read_bytes()).hexdigest())
    return out


@pytest.fixture
def app_dir(tmp_path) -> Path:
    src = tmp_path / "app"
    (src / "sessions" / "eu").mkdir(parents=True)
    (src / "sessions" / "eu" / "active.json").write_text('{"active": 1284}\n')
    (src / "flags.yaml").write_text("cold_start_cache: true\n")
    (src / "blob.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))  # > one pipe chunk, odd size
    (src / "empty").write_bytes(b"")
    (src / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "run.sh").chmod(0o750)
    (src / "current").symlink_to("sessions/eu/active.json")
    return src


def tar_step(src: Path, dest: Path, name: str = "files") -> AppStateStep:
    return AppStateStep(
        name=name,
        backup_command=["tar", "-C", str(src), "-cf", "-", "."],
        restore_command=["tar", "-C", str(dest), "-xpf", "-"],
    )


def test_tarred_directory_restores_byte_identical(app_dir, tmp_path, local_store):
    store = local_store()
    dest = tmp_path / "restored"
    dest.mkdir()
    target = AppStateTarget(steps=[tar_step(app_dir, dest)])
    manifest = backup_task.fn("app-state", target, store)
    assert [o.name for o in manifest.objects] == ["files"] and manifest.verified_at is not None

    report = restore_task.fn(manifest, target, store, {})
    assert report["restored_steps"] == ["files"]
    assert tree(dest) == tree(app_dir)
    assert (dest / "blob.bin").read_bytes() == (app_dir / "blob.bin").read_bytes()


def test_script_failing_half_way_leaves_no_backup(app_dir, tmp_path, local_store, caplog):
    store = local_store()
    half = [
        "sh",
        "-c",
        'tar -C "$1" -cf - . ; echo "state export broke half-way" >&2; exit 1',
        "sh",
        str(app_dir),
    ]
    target = AppStateTarget(
        steps=[
            tar_step(app_dir, tmp_path / "r1", "first"),
            AppStateStep(name="second", backup_command=half, restore_command=["true"]),
        ]
    )
    with caplog.at_level(logging.INFO), pytest.raises(ComponentFailed, match="status 1") as err:
        backup_task.fn("app-state", target, store)
    assert "state export broke half-way" in str(err.value)  # stderr's tail says why
    assert list_backups(store, "app-state") == []
    assert list(backend_for(store).list_keys(store.prefix)) == [], "the first step's object is removed too"


def test_restore_script_failure_is_reported(app_dir, tmp_path, local_store):
    store = local_store()
    target = AppStateTarget(steps=[tar_step(app_dir, tmp_path / "does-not-exist")])
    manifest = backup_task.fn("app-state", target, store)
    with pytest.raises(ComponentFailed, match="app-state restore files exited"):
        restore_task.fn(manifest, target, store, {})


def test_only_selected_steps_restore_and_unknown_steps_change_nothing(app_dir, tmp_path, local_store):
    store = local_store()
    d1, d2 = tmp_path / "d1", tmp_path / "d2"
    d1.mkdir()
    d2.mkdir()
    target = AppStateTarget(steps=[tar_step(app_dir, d1, "one"), tar_step(app_dir, d2, "two")])
    manifest = backup_task.fn("app-state", target, store)
    with pytest.raises(BadInput, match="not in both"):
        restore_task.fn(manifest, target, store, {"steps": ["one", "nope"]})
    assert list(d1.iterdir()) == [] and list(d2.iterdir()) == []
    restore_task.fn(manifest, target, store, {"steps": ["two"]})
    assert list(d1.iterdir()) == [] and tree(d2) == tree(app_dir)


def test_no_shell_secrets_in_env_only(tmp_path, local_store):
    store = local_store()
    marker = tmp_path / "pwned"
    # A shell string is refused, and metacharacters in argv are plain data.
    with pytest.raises(ConfigurationError, match="not a shell string"):
        from tasks.proc import run

        run("echo hi; touch " + str(marker))  # type: ignore[arg-type]
    step = AppStateStep(
        name="env",
        backup_command=[
            sys.executable,
            "-c",
            "import os,sys; sys.stdout.write(os.environ['TOKEN'] + sys.argv[1])",
            f"; touch {marker}",
        ],
        restore_command=["true"],
        secret_env={"TOKEN": SecretStr("tok-123")},
    )
    manifest = backup_task.fn("app-state", AppStateTarget(steps=[step]), store)
    assert not marker.exists()
    assert manifest.objects[0].raw_size == len("tok-123" + f"; touch {marker}")
    assert "tok-123" not in manifest.model_dump_json()


def test_a_hung_script_is_killed_at_its_timeout(local_store):
    step = AppStateStep(
        name="slow", backup_command=["sleep", "30"], restore_command=["true"], timeout_seconds=0.5
    )
    with pytest.raises(ComponentFailed, match="timed out"):
        backup_task.fn("app-state", AppStateTarget(steps=[step]), local_store())


def test_duplicate_step_names_and_bad_names_are_refused():
    with pytest.raises(ValueError, match="unique"):
        AppStateTarget(steps=[AppStateStep(name="a", backup_command=["true"], restore_command=["true"])] * 2)
    with pytest.raises(ValueError):
        AppStateStep(name="../etc", backup_command=["true"], restore_command=["true"])


def test_round_trip_through_the_prefect_flows(prefect_server, app_dir, tmp_path, local_store):
    from flows.backup import backup_component
    from flows.restore import restore_component

    store = local_store(encryption_key=SecretStr("app-state-key"))
    dest = tmp_path / "flow-restored"
    dest.mkdir()
    target = AppStateTarget(steps=[tar_step(app_dir, dest)])
    result = backup_component("app-state", target=target, store=store)
    report = restore_component("app-state", backup_id=result.id, target=target, store=store)
    assert report["restored_steps"] == ["files"] and tree(dest) == tree(app_dir)


def test_odd_outputs_round_trip_and_a_step_failing_mid_way_says_where_the_target_stands(
    tmp_path, local_store
):
    """Binary, empty and large outputs come back byte for byte; when one restore script fails,
    the error names the steps already restored and those that did not run, and how to resume."""
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    (src / "bin").write_bytes(bytes(range(256)) * 4096)
    (src / "big").write_bytes(os.urandom(8 * 1024 * 1024))

    def step(name: str, data: str | None, restore: list[str] | None = None) -> AppStateStep:
        backup = ["cat", str(src / data)] if data else ["true"]
        return AppStateStep(
            name=name,
            backup_command=backup,
            restore_command=restore or ["sh", "-c", f'cat > "{out}/{name}"'],
        )

    fail = ["sh", "-c", "cat >/dev/null; echo disk full >&2; exit 3"]
    steps = [step("a-bin", "bin"), step("0.empty_", None), step("big", "big")]
    target = AppStateTarget(steps=[*steps, step("fails", "bin", fail), step("last", "bin")])
    store = local_store()
    manifest = backup_task.fn("app-state", target, store)
    assert [o.raw_size for o in manifest.objects] == [2**20, 0, 8 * 2**20, 2**20, 2**20]

    with pytest.raises(ComponentFailed, match="disk full") as err:
        restore_task.fn(manifest, target, store, {})
    assert "steps ['a-bin', '0.empty_', 'big'] were restored, step 'fails' failed" in str(err.value)
    assert "steps ['last'] did not run" in str(err.value)
    assert "'steps': ['fails', 'last']" in str(err.value)
    assert (out / "a-bin").read_bytes() == (src / "bin").read_bytes()
    assert (out / "big").read_bytes() == (src / "big").read_bytes()
    assert (out / "0.empty_").read_bytes() == b"" and not (out / "last").exists()

    with pytest.raises(BadInput, match="twice"):
        restore_task.fn(manifest, target, store, {"steps": ["last", "last"]})
    assert not (out / "last").exists()
    restore_task.fn(manifest, target, store, {"steps": ["last"]})
    assert (out / "last").read_bytes() == (src / "bin").read_bytes()
    with pytest.raises(ValueError, match="reserved"):
        step("manifest.json", "bin")


@pytest.mark.parametrize(
    ("size", "restorer", "why"),
    [  # stops reading half-way (the pipe breaks) / reads nothing of input that fits in the pipe
        (2 * 1024 * 1024, ["sh", "-c", 'head -c 1000 > "$OUT"'], "stopped reading before the end"),
        # the write races the script's exit: left unread in the pipe, or refused once it is gone
        (100, ["sh", "-c", 'echo restored > "$OUT"'], "100 bytes left unread|stopped reading before the end"),
    ],
)
def test_a_restore_script_that_exits_0_without_reading_all_its_input_fails(
    tmp_path, local_store, size, restorer, why
):
    """Exit status 0 is not enough: a restore that consumed only part of the state restored only
    part of it, and must not be reported as restored."""
    data = tmp_path / "state.bin"
    data.write_bytes(os.urandom(size))
    step = AppStateStep(
        name="state",
        backup_command=["cat", str(data)],
        restore_command=restorer,
        env={"OUT": str(tmp_path / "out")},
    )
    target, store = AppStateTarget(steps=[step]), local_store()
    manifest = backup_task.fn("app-state", target, store)
    with pytest.raises(ComponentFailed, match=f"did not read all of its input \\(({why})\\)") as err:
        restore_task.fn(manifest, target, store, {})
    assert "steps [] were restored, step 'state' failed" in str(err.value)
    # a script that reads everything still restores (and counts) as before
    step.restore_command = ["sh", "-c", 'cat > "$OUT"']
    assert restore_task.fn(manifest, target, store, {})["restored_steps"] == ["state"]
    assert (tmp_path / "out").read_bytes() == data.read_bytes()


def test_drill_commands_never_show_a_steps_secret_env(tmp_path, local_store, caplog):
    """A drill restore or verify command that prints its secret_env (a DSN with a password: a
    name the generic PASS/TOKEN/... filter does not catch) has it redacted, as in backup/restore."""
    from tasks.components import app_state

    secret = "postgres://app:hunter2-drill@db/app"
    step = AppStateStep(
        name="state",
        backup_command=["echo", "state"],
        restore_command=["true"],
        secret_env={"UPSTREAM_DSN": SecretStr(secret)},
        drill_restore_command=["sh", "-c", 'cat >/dev/null; echo "no route to $UPSTREAM_DSN" >&2; exit 2'],
    )
    target, store = AppStateTarget(steps=[step]), local_store()
    manifest = backup_task.fn("app-state", target, store)
    caplog.set_level(logging.INFO)
    with pytest.raises(ComponentFailed, match="no route to \\*\\*\\*") as err:
        app_state.drill(target, manifest, store, "redact1")
    step.drill_restore_command = ["sh", "-c", 'cat > "$KLB_DRILL_DIR/state"']
    step.verify_command = ["sh", "-c", 'echo "verify could not reach $UPSTREAM_DSN" >&2; exit 1']
    with pytest.raises(ComponentFailed, match="could not reach \\*\\*\\*") as err2:
        app_state.drill(target, manifest, store, "redact2")
    assert secret not in str(err.value) + str(err2.value) and secret not in caplog.text


@pytest.mark.parametrize("broken", ["command", "cwd"])
def test_a_step_that_cannot_start_refuses_the_restore_before_any_step_runs(
    app_dir, tmp_path, local_store, broken
):
    """A misspelt restore command or a missing working directory of the second step failed only
    when its turn came, after the first step had overwritten its state: now every selected step's
    command and directory are found before the first one runs."""
    store = local_store()
    d1, d2 = tmp_path / "d1", tmp_path / "d2"
    d1.mkdir()
    d2.mkdir()
    target = AppStateTarget(steps=[tar_step(app_dir, d1, "one"), tar_step(app_dir, d2, "two")])
    manifest = backup_task.fn("app-state", target, store)
    second = target.steps[1]
    if broken == "command":
        second = second.model_copy(update={"restore_command": ["klb-no-such-restore-tool", "-x"]})
        match = "step 'two'.*klb-no-such-restore-tool.*nothing was restored"
    else:
        second = second.model_copy(update={"cwd": str(tmp_path / "gone")})
        match = f"step 'two'.*{tmp_path / 'gone'}.*nothing was restored"
    broken_target = AppStateTarget(steps=[target.steps[0], second])
    with pytest.raises(ConfigurationError, match=match):
        restore_task.fn(manifest, broken_target, store, {})
    assert list(d1.iterdir()) == [] and list(d2.iterdir()) == [], "a step ran before the refusal"


def test_a_backup_step_whose_cwd_is_missing_says_so(tmp_path, local_store):
    """Popen fails the same way for a missing program and a missing working directory: the error
    said 'command not found: sh' for a step whose command is installed."""
    store = local_store()
    gone = tmp_path / "gone"
    step = AppStateStep(
        name="s", backup_command=["sh", "-c", "echo x"], restore_command=["true"], cwd=str(gone)
    )
    with pytest.raises(ConfigurationError, match=f"working directory {gone} does not exist"):
        backup_task.fn("app-state", AppStateTarget(steps=[step]), store)
    assert list_backups(store, "app-state") == []


def test_a_damaged_step_is_refused_before_any_step_runs_and_recorded_untouched(
    app_dir, tmp_path, local_store
):
    """Every step's object is checked whole before the first script runs: a damaged one refuses
    the restore with the target as it was, and says so (a 'failed' record that may have changed
    the target let a rollback put the safety backup over writes made since)."""
    from tasks.errors import IntegrityError

    store = local_store()
    d1, d2 = tmp_path / "d1", tmp_path / "d2"
    d1.mkdir()
    d2.mkdir()
    target = AppStateTarget(steps=[tar_step(app_dir, d1, "one"), tar_step(app_dir, d2, "two")])
    manifest = backup_task.fn("app-state", target, store)
    damaged = Path(store.path) / manifest.object("two").key
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(IntegrityError) as refused:
        restore_task.fn(manifest, target, store, {})
    assert getattr(refused.value, "target_untouched", False)
    assert list(d1.iterdir()) == [] and list(d2.iterdir()) == [], "a step ran before the refusal"


def test_no_step_inherits_the_workers_secrets(tmp_path, local_store, monkeypatch):
    """The worker's own credentials (the store's AWS keys, a password or token of the flow pod)
    reached every backup, restore, drill restore and verify script through the inherited
    environment, and so everything those scripts start. A step gets only what it names: its `env`
    and `secret_env`, plus the non-secret inherited variables (PATH, HOME, ...)."""
    from tasks.components import app_state

    leaked = {
        "AWS_SECRET_ACCESS_KEY": "aws-" + os.urandom(8).hex(),
        "AWS_SESSION_TOKEN": "sts-" + os.urandom(8).hex(),
        "KLB_STORE_ENCRYPTION_KEY": "enc-" + os.urandom(8).hex(),
        "PGPASSWORD": "pg-" + os.urandom(8).hex(),
    }
    for name, value in leaked.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("KLB_HARMLESS", "kept")
    dump = "import json, os, sys; json.dump(dict(os.environ), open(sys.argv[1], 'w'))"
    seen = tmp_path / "seen"
    seen.mkdir()

    def env_of(path: Path) -> dict[str, str]:
        import json

        return json.loads(path.read_text())

    step = AppStateStep(
        name="state",
        backup_command=[sys.executable, "-c", dump + "; print('state')", str(seen / "backup")],
        restore_command=[sys.executable, "-c", dump + "; sys.stdin.read()", str(seen / "restore")],
        drill_restore_command=["sh", "-c", 'cat > "$KLB_DRILL_DIR/state"'],
        verify_command=[sys.executable, "-c", dump, str(seen / "verify")],
        env={"MODE": "plain"},
        secret_env={"PGPASSWORD": SecretStr("the-steps-own"), "API_TOKEN": SecretStr("tok")},
    )
    target, store = AppStateTarget(steps=[step]), local_store()
    manifest = backup_task.fn("app-state", target, store)
    restore_task.fn(manifest, target, store, {})
    app_state.drill(target, manifest, store, "envleak")
    for what in ("backup", "restore", "verify"):
        child = env_of(seen / what)
        text = (seen / what).read_text()
        assert not [n for n, v in leaked.items() if v in text], (what, sorted(child))
        assert "AWS_SECRET_ACCESS_KEY" not in child and "KLB_STORE_ENCRYPTION_KEY" not in child
        assert child["PGPASSWORD"] == "the-steps-own" and child["API_TOKEN"] == "tok", what
        assert child["MODE"] == "plain" and child["KLB_HARMLESS"] == "kept", what
        assert child["PATH"] == os.environ["PATH"], what


def test_selected_steps_restore_in_the_backups_order(tmp_path, local_store):
    """`steps` selects which steps run, not in which order: they ran in the order the option
    listed them, so a data step could run before the schema step it needs (the backup's order)."""
    log = tmp_path / "order"

    def step(name: str) -> AppStateStep:
        return AppStateStep(
            name=name,
            backup_command=["echo", name],
            restore_command=["sh", "-c", f'cat >/dev/null; echo {name} >> "{log}"'],
        )

    target, store = AppStateTarget(steps=[step("schema"), step("data"), step("cache")]), local_store()
    manifest = backup_task.fn("app-state", target, store)
    report = restore_task.fn(manifest, target, store, {"steps": ["cache", "schema"]})
    assert report["restored_steps"] == ["schema", "cache"]
    assert log.read_text().split() == ["schema", "cache"]
