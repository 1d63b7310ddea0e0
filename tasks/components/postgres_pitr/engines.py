"""WAL archive engines behind one small interface. barman-cloud is the one built.

The engine owns the archive's layout: it lists the archived WAL, fetches a segment, and
writes the `restore_command` a recovering server runs (as the `postgres` OS user, so the
engine's executables must be reachable by that user: see scripts/setup.sh).
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Protocol

from blocks.pitr import PitrTarget
from tasks.errors import BadInput, ComponentFailed, ConfigurationError
from tasks.private_files import private_dir, private_file
from tasks.proc import find_binary, inherited_secrets, start_piped, stop

# A venv built from /usr/bin/python3 by scripts/setup.sh: root's pyenv is not readable by postgres.
DEFAULT_BARMAN_BIN = "/opt/knative-lambda-backup/barman-venv/bin"

# ---- WAL names and LSNs --------------------------------------------------------------------


# PostgreSQL's own pg_lsn syntax: two hex numbers of 1 to 8 digits. int(x, 16) alone also takes
# '0x', '_', signs, spaces and more than 32 bits, which would name another position silently.
_LSN = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


def parse_lsn(text: str) -> int:
    match = _LSN.fullmatch(text.strip()) if isinstance(text, str) else None
    if not match:
        raise BadInput(
            f"{str(text)[:40]!r} is not an LSN: write it as PostgreSQL prints it, two hexadecimal "
            "numbers of at most 8 digits, like 0/3000060 (pg_current_wal_lsn(), pg_create_restore_point())"
        )
    return (int(match[1], 16) << 32) | int(match[2], 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def is_segment(name: str) -> bool:
    return len(name) == 24 and all(c in "0123456789ABCDEF" for c in name)


def segment_number(name: str, seg_size: int) -> tuple[int, int]:
    """(timeline, segment number) of a WAL segment file name."""
    per_id = 0x100000000 // seg_size
    return int(name[:8], 16), int(name[8:16], 16) * per_id + int(name[16:], 16)


def segment_name(timeline: int, segno: int, seg_size: int) -> str:
    per_id = 0x100000000 // seg_size
    return f"{timeline:08X}{segno // per_id:08X}{segno % per_id:08X}"


def segment_of(lsn: int, seg_size: int) -> int:
    return lsn // seg_size


# ---- the interface ---------------------------------------------------------------------------


class ArchiveReader(Protocol):
    names: list[str]  # every WAL file in the archive when it was opened, as list_wal

    def fetch(self, wal_name: str, dest: Path) -> None:
        """Download one archived WAL file to `dest` (decompressed); ComponentFailed if absent."""


class PitrEngine(Protocol):
    name: str

    def list_wal(self, target: PitrTarget) -> list[str]:
        """Names of every WAL file in the archive (segments, .history, .backup, .partial)."""

    def reader(self, target: PitrTarget) -> AbstractContextManager[ArchiveReader]:
        """The archive opened for a run of reads: its listing, then any file of it fetched."""

    def restore_command(self, target: PitrTarget, credentials_file: Path, spool_dir: Path) -> str:
        """The `restore_command` for a recovering server; secrets stay in `credentials_file`, and
        any file the engine keeps between its runs in `spool_dir`, which only we can create."""

    def archive_command(self, target: PitrTarget, credentials_file: Path) -> str:
        """The `archive_command` the source server should run (documentation / checks)."""


# ---- barman-cloud ---------------------------------------------------------------------------

# One process for a run of reads: the listing, then each file asked on stdin ([name, dest], a
# JSON line) answered on stdout in a line. Its spool is private: barman hands over a file of the
# asked name found in its spool before it looks in the archive, and the default spool,
# /var/tmp/walrestore, is anyone's to create (a WAL file planted there would be replayed).
_READER = """
import json, sys
from barman.clients.cloud_cli import OperationErrorExit
from barman.cloud import CloudBackupCatalog, CloudWalDownloader
from barman.cloud_providers.aws_s3 import S3CloudInterface
url, server, endpoint, spool = sys.argv[1], sys.argv[2], sys.argv[3] or None, sys.argv[4]
try:
    iface = S3CloudInterface(url=url, endpoint_url=endpoint, jobs=1)
    if not iface.test_connectivity():
        sys.exit("cannot reach " + url)
    if not iface.bucket_exists:
        sys.exit("bucket of " + url + " does not exist")
    print(json.dumps(sorted(CloudBackupCatalog(iface, server).get_wal_paths())), flush=True)
except Exception as exc:  # one line for the operator, not boto's traceback
    sys.exit(type(exc).__name__ + ": " + str(exc))
down = CloudWalDownloader(iface, server, spool_dir=spool)
for line in sys.stdin:
    name, dest = json.loads(line)
    try:
        down.download_wal(name, dest, False, 0)
        print("ok", flush=True)
    except OperationErrorExit:
        print("missing", flush=True)
    except Exception as exc:
        print((type(exc).__name__ + ": " + str(exc)).replace("\\n", " "), flush=True)
"""
READ_TIMEOUT = 300  # seconds for the listing, and for each file
_CREDENTIAL_ERRORS = ("NoCredentialsError", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken")


class BarmanCloud:
    """barman-cloud (PyPI `barman[cloud]`): boto3-based, plain-HTTP S3 endpoints work."""

    name = "barman-cloud"

    def __init__(self, bin_dir: str | None = None) -> None:
        self.bin_dir = Path(bin_dir or os.environ.get("KLB_BARMAN_BIN") or DEFAULT_BARMAN_BIN)

    def bin(self, command: str) -> str:
        return find_binary(
            command,
            [self.bin_dir, Path(sys.executable).parent],
            missing=f"{command} is not installed: run scripts/setup.sh (it builds {DEFAULT_BARMAN_BIN}) "
            "or set KLB_BARMAN_BIN to a directory with barman-cloud's commands",
        )

    def _python(self) -> str:
        python = self.bin_dir / "python"
        return str(python) if python.exists() else sys.executable

    def _endpoint_args(self, target: PitrTarget) -> list[str]:
        return ["--endpoint-url", target.endpoint_url] if target.endpoint_url else []

    def list_wal(self, target: PitrTarget) -> list[str]:
        with self.reader(target) as archive:
            return archive.names

    @contextmanager
    def reader(self, target: PitrTarget) -> Iterator[ArchiveReader]:
        with private_dir() as spool, aws_engine_env(target) as env:
            err = Path(spool) / "stderr"  # no WAL file name: barman never hands it over
            argv = [self._python(), "-c", _READER, target.archive_url, target.server_name]
            helper = start_piped([*argv, target.endpoint_url or "", spool], err, env)
            try:
                try:
                    names = json.loads(_answer(helper, err, "the WAL listing"))
                except ComponentFailed as exc:
                    if not any(code in str(exc) for code in _CREDENTIAL_ERRORS):
                        raise
                    raise ConfigurationError(
                        f"the WAL archive {target.archive_url} has no valid S3 credentials for us: set "
                        "aws_access_key_id / aws_secret_access_key on the PITR target block (or the "
                        "environment's AWS credentials)"
                    ) from None
                yield _BarmanReader(helper, err, names, target.archive_url)
            finally:
                stop(helper)

    def _env_prefix(self, target: PitrTarget, credentials_file: Path) -> list[str]:
        # PostgreSQL runs these commands through /bin/sh: every configured value is quoted, and
        # the secrets stay in a file only the server's OS user can read.
        env = [f"AWS_SHARED_CREDENTIALS_FILE={shlex.quote(str(credentials_file))}"]
        if target.region:
            env.append(f"AWS_DEFAULT_REGION={shlex.quote(target.region)}")
        return env

    def restore_command(self, target: PitrTarget, credentials_file: Path, spool_dir: Path) -> str:
        env = self._env_prefix(target, credentials_file)
        argv = [
            self.bin("barman-cloud-wal-restore"),
            *self._endpoint_args(target),
            "--spool-dir",  # never the shared default: see _READER
            str(spool_dir),
            target.archive_url,
            target.server_name,
        ]
        return " ".join([*env, *map(shlex.quote, argv), "%f", "%p"])

    def archive_command(self, target: PitrTarget, credentials_file: Path) -> str:
        env = self._env_prefix(target, credentials_file)
        argv = [
            self.bin("barman-cloud-wal-archive"),
            *self._endpoint_args(target),
            "--gzip",
            target.archive_url,
            target.server_name,
        ]
        return " ".join([*env, *map(shlex.quote, argv), "%p"])


def _keys(target: PitrTarget) -> dict[str, str]:
    """The block's S3 keys, else ambient ones in our environment (the recovering server does not
    inherit those: they go into its credentials file). IRSA / instance profiles: none."""
    if target.aws_access_key_id and target.aws_secret_access_key:
        return {
            "aws_access_key_id": target.aws_access_key_id.get_secret_value(),
            "aws_secret_access_key": target.aws_secret_access_key.get_secret_value(),
        }
    env = os.environ
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        keys = {
            "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        }
        if env.get("AWS_SESSION_TOKEN"):
            keys["aws_session_token"] = env["AWS_SESSION_TOKEN"]
        return keys
    return {}


def _credentials_text(target: PitrTarget) -> str:
    return "\n".join(["[default]", *(f"{k} = {v}" for k, v in _keys(target).items())]) + "\n"


def server_env(target: PitrTarget) -> dict[str, str | None]:
    """The recovering server's environment, which its restore_command inherits: none of our
    secrets (readable in /proc/<pid>/environ for the server's whole life; inherited S3 keys would
    also beat its credentials file). Without keys to write, the ambient identity stays: IRSA's and
    EKS Pod Identity's token files are paths (AWS_WEB_IDENTITY_TOKEN_FILE...), not secrets."""
    if _keys(target):
        return {**inherited_secrets(()), "AWS_PROFILE": None}
    return inherited_secrets([n for n in os.environ if n.startswith("AWS_") and n.endswith("_FILE")])


def ambient_identity(target: PitrTarget) -> dict[str, str]:
    """Without keys to write, the AWS_* settings of the pod's own identity that the recovering
    server keeps (server_env): IRSA's token file path and role, EKS Pod Identity's token file and
    URI, region, endpoints. For a process started with an environment of its own (the prefetcher):
    names and paths only, never a secret-looking variable's value."""
    if _keys(target):
        return {}
    removed = server_env(target)
    return {n: v for n, v in os.environ.items() if n.startswith("AWS_") and n not in removed}


def write_credentials_file(target: PitrTarget, path: Path, owner: str | None) -> Path:
    """An AWS shared-credentials file readable only by the server's OS user."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)  # never through a link
    with os.fdopen(fd, "w") as fh:
        if owner:
            os.fchown(fh.fileno(), pwd.getpwnam(owner).pw_uid, -1)
        fh.write(_credentials_text(target))
    return path


@contextmanager
def aws_engine_env(target: PitrTarget) -> Iterator[dict[str, str | None]]:
    """The environment of a barman-cloud process we run: the target's keys in a private
    shared-credentials file, never in the environment (readable in /proc, inherited by children).
    Without keys on the block, the ambient AWS credentials (IRSA, instance profile) apply."""
    env: dict[str, str | None] = {"PGPASSWORD": None}  # barman-cloud never logs in to PostgreSQL
    if target.region:
        env["AWS_DEFAULT_REGION"] = target.region
    if not (target.aws_access_key_id and target.aws_secret_access_key):
        yield env
        return
    with private_file("credentials", _credentials_text(target)) as path:
        # inherited keys would beat the file in boto's order: the block's keys are the ones meant
        yield {**env, "AWS_SHARED_CREDENTIALS_FILE": path, "AWS_ACCESS_KEY_ID": None,
               "AWS_SECRET_ACCESS_KEY": None, "AWS_SESSION_TOKEN": None, "AWS_PROFILE": None}  # fmt: skip


class _BarmanReader:
    def __init__(self, helper: subprocess.Popen, err: Path, names: list[str], url: str) -> None:
        self._helper, self._err, self.names, self._url = helper, err, names, url

    def fetch(self, wal_name: str, dest: Path) -> None:
        self._helper.stdin.write(json.dumps([wal_name, str(dest)]).encode() + b"\n")  # type: ignore[union-attr]
        self._helper.stdin.flush()  # type: ignore[union-attr]
        answer = _answer(self._helper, self._err, f"WAL file {wal_name}")
        if answer == "missing":
            raise ComponentFailed(f"WAL file {wal_name} is not in the archive {self._url}")
        if answer != "ok":
            raise ComponentFailed(
                f"barman-cloud could not fetch WAL file {wal_name} of {self._url}: {answer}"
            )


def _answer(helper: subprocess.Popen, err: Path, what: str) -> str:
    """The reader's next line, or ComponentFailed with why it has none (it ended: its last
    error line; it hung: killed after READ_TIMEOUT)."""
    timer = threading.Timer(READ_TIMEOUT, helper.kill)
    timer.start()
    try:
        line = helper.stdout.readline()  # type: ignore[union-attr]
    finally:
        timer.cancel()
    if line.endswith(b"\n"):
        return line.decode(errors="replace").rstrip("\n")
    helper.wait()
    last = (err.read_text(errors="replace").strip().splitlines() or ["(no error output)"])[-1]
    how = f"no answer in {READ_TIMEOUT} s" if helper.returncode == -9 else last
    raise ComponentFailed(f"barman-cloud (reading {what}) failed: {how}")


ENGINES: dict[str, type] = {"barman-cloud": BarmanCloud}


def engine_for(name: str = "barman-cloud") -> PitrEngine:
    try:
        return ENGINES[name]()
    except KeyError:
        raise BadInput(f"unknown PITR engine {name!r}: choose one of {', '.join(ENGINES)}") from None
