"""The recovered instance's configuration: only the recovery's own settings apply.

A base backup carries its source's postgresql.auto.conf (and postgresql.conf, where it lives in
the data directory). A source that was itself recovered (a cut-over PITR instance keeps its
recovery_target_* and restore_command in postgresql.auto.conf), a standby, or one with
archive_command set would otherwise decide where this recovery stops, what it runs at its end,
and where a later archive_mode=on archives to. Every such setting is given here, after the
source's (the last occurrence of a name wins, postgresql.auto.conf is read last).
"""

from __future__ import annotations

from pathlib import Path

from tasks.components.postgres_pitr import files
from tasks.components.postgres_pitr.targets import RecoveryTarget

CONF_FILE = "postgresql.auto.conf"
_TARGETS = ("recovery_target", "recovery_target_lsn", "recovery_target_name", "recovery_target_time")
_TARGETS += ("recovery_target_xid",)


def conf_quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _source_overrides(major: int) -> dict[str, str]:
    """The source's settings that would change how or where the recovery goes, or what the
    recovered server does once promoted, reset to what a lone recovered instance needs."""
    conf = {
        "archive_mode": "'off'",  # it must never write into the production archive...
        "archive_command": "''",  # ...nor once archive_mode is turned on: configure it then
        "recovery_end_command": "''",  # the source's would run here at the end of recovery
        "archive_cleanup_command": "''",
        "recovery_min_apply_delay": "0",
        "primary_conninfo": "''",  # never stream from (or become a standby of) production
        "primary_slot_name": "''",
        # the source's synchronous standbys are not there: commits would wait for them forever
        "synchronous_standby_names": "''",
        "recovery_target_timeline": "'current'",
        "recovery_target_inclusive": "on",
        "recovery_target_action": "'pause'",  # promotion is promote(), an explicit step
    }
    if major >= 15:
        conf["archive_library"] = "''"  # it beats archive_command when set
    if major <= 15:
        conf["promote_trigger_file"] = "''"  # removed in 16: an unknown name stops the server
    return conf


def recovery_settings(
    goal: RecoveryTarget, restore_command: str, port: int, sock: Path, shared_buffers: str, major: int
) -> dict[str, str]:
    """The settings appended to the recovered data directory's postgresql.auto.conf, in order."""
    conf = {
        # sized for the pod it runs in, not the source (replay needs little); huge pages may not
        # exist there. Settings a standby must keep >= the primary's (max_connections...) stay.
        "shared_buffers": conf_quote(shared_buffers),
        "huge_pages": "'try'",
        "port": str(port),
        "listen_addresses": "'127.0.0.1'",
        "unix_socket_directories": conf_quote(str(sock)),
        # its log (-l) is read for "recovery stopping" and NOT_REACHED: on stderr, at LOG level,
        # untranslated, whatever the source's postgresql.conf (a base backup carries it) says
        "logging_collector": "off",
        "log_destination": "'stderr'",
        "log_min_messages": "'warning'",
        "lc_messages": "'C'",
        "hot_standby": "on",
        "restore_command": conf_quote(restore_command),
        **_source_overrides(major),
    }
    chosen = {
        "time": ("recovery_target_time", goal.time.isoformat() if goal.time else ""),
        "lsn": ("recovery_target_lsn", goal.lsn or ""),
        "name": ("recovery_target_name", goal.name or ""),
    }.get(goal.kind)
    # Every other target emptied BEFORE ours is set: PostgreSQL applies settings in file order and
    # refuses a second target ("multiple recovery targets specified") while one is still set.
    conf.update({name: "''" for name in _TARGETS if not chosen or name != chosen[0]})
    if chosen:
        conf[chosen[0]] = conf_quote(chosen[1])
    return conf


def write_recovery_conf(data: Path, settings: dict[str, str]) -> None:
    """Append `settings` to the data directory's postgresql.auto.conf (they win over the source's)."""
    if not (data / "postgresql.conf").exists():  # Debian keeps it in /etc: the data dir has none
        files.touch(data / "postgresql.conf")
    note = "\n# knative-lambda-backup PITR: new instance, archiving off, the source's recovery reset\n"
    files.append_text(data / CONF_FILE, note)
    append_settings(data, settings)


def append_settings(data: Path, settings: dict[str, str]) -> None:
    """Settings after all others in postgresql.auto.conf (the last occurrence wins)."""
    if settings:
        files.append_text(data / CONF_FILE, "".join(f"{k} = {v}\n" for k, v in settings.items()))
