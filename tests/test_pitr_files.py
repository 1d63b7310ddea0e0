"""A recovered instance's files, written by us (root, on a host) into directories its server's OS
user owns: never through a link put there, whoever put it (that user, a tampered base backup)."""

from __future__ import annotations

import os
import pwd
import secrets
from pathlib import Path

import pytest

from blocks.pitr import PitrTarget
from tasks.components.postgres_pitr import files
from tasks.components.postgres_pitr.engines import write_credentials_file
from tasks.components.postgres_pitr.hostconf import drop_foreign_includes, write_auth_files
from tasks.components.postgres_pitr.recover import _prepare_directory
from tasks.components.postgres_pitr.settings import write_recovery_conf
from tasks.errors import BadInput, IntegrityError

USER = "postgres"


@pytest.fixture
def victim(tmp_path) -> Path:
    """A file of ours that no recovery has any business writing to or giving away."""
    path = tmp_path / "root-only"
    path.write_text("untouched\n")
    return path


def _untouched(victim: Path) -> None:
    assert victim.read_text() == "untouched\n"
    assert victim.stat().st_uid == os.geteuid()


@pytest.mark.parametrize("name", ["postgresql.auto.conf", "postgresql.conf"])
def test_recovery_settings_are_never_written_through_a_link(tmp_path, victim, name):
    data = tmp_path / "data"
    data.mkdir()
    (data / "postgresql.conf").write_text("")
    (data / name).unlink(missing_ok=True)
    (data / name).symlink_to(victim)
    with pytest.raises(IntegrityError, match="symbolic link"):
        drop_foreign_includes(data)  # reads, then rewrites, each configuration file
    with pytest.raises(IntegrityError, match="symbolic link"):
        files.give(data / name, USER)  # as recover() hands the server its files
    if name == "postgresql.auto.conf":  # the one the recovery settings are appended to
        with pytest.raises(IntegrityError, match="symbolic link"):
            write_recovery_conf(data, {"archive_mode": "off"})
    _untouched(victim)


def test_an_include_that_leads_out_of_the_data_directory_through_a_link_is_left_out(tmp_path, victim):
    data = tmp_path / "data"
    (data / "conf.d").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.conf").write_text("data_directory = '/elsewhere'\n")
    (data / "linked").symlink_to(outside)
    (data / "postgresql.conf").write_text("include_dir 'linked'\ninclude_dir 'conf.d'\n")
    warnings = drop_foreign_includes(data)
    assert (outside / "x.conf").read_text() == "data_directory = '/elsewhere'\n"  # not rewritten
    assert (data / "postgresql.conf").read_text().startswith("# knative-lambda-backup PITR, not on this host")
    assert len(warnings) == 1 and "linked" in warnings[0]


def test_the_instance_directory_stays_ours_and_the_servers_user_gets_only_its_own(tmp_path, victim):
    """As root for a server of another user: the user owns the data and socket directories (the
    server needs them), not the instance directory, where we write credentials, the restore
    script and settings; a link it planted there would have had us write through it."""
    assert os.geteuid() == 0, "the suite runs as root (scripts/setup.sh installs packages)"
    root = _prepare_directory(str(tmp_path / "pitr"), USER)
    uid = pwd.getpwnam(USER).pw_uid
    assert (root.stat().st_uid, oct(root.stat().st_mode & 0o777)) == (os.geteuid(), "0o711")
    assert (root / "data").stat().st_uid == uid and (root / "socket").stat().st_uid == uid
    write_auth_files(root, USER)
    assert (root / "pg_hba.conf").stat().st_uid == uid
    target = PitrTarget(port=5432, password=secrets.token_hex(8), archive_url="s3://bucket-a/pitr")
    (root / "aws-credentials").symlink_to(victim)
    with pytest.raises(OSError):  # a link at the credentials' name: refused, not followed
        write_credentials_file(target, root / "aws-credentials", USER)
    _untouched(victim)


def test_a_recovery_directory_that_is_a_link_is_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "pitr").symlink_to(real)
    with pytest.raises(BadInput, match="symbolic link"):
        _prepare_directory(str(tmp_path / "pitr"), USER)
