"""The source host's files, libraries and addresses, taken out of a recovered data directory.

A base backup carries its source's postgresql.conf / postgresql.auto.conf. What they name of the
source HOST (TLS certificates, hba/ident files, include files and directories, its data directory,
pid file, socket group, log directory, preload libraries) is not on the host a drill or a DR
restore runs on, and the recovery instance would not start there (or, on the source's own host,
would read production's files). Here each is pointed at the recovery's own (its directory), turned
off, or left out with a warning in the recovery's result. Data is untouched: this is configuration only.

shared_preload_libraries (and session_/local_preload_libraries, which fail every connection): a
library installed on this host is kept, a missing one is dropped with a warning naming it. WAL
replay and the data need no preload library (PostgreSQL refuses, with its own error, a WAL record
of a resource manager it lacks), so refusing would stop a 3 a.m. restore for what is usually
pg_stat_statements or pg_cron; the report says which library to install before the features
that need it are used after promotion.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tasks.components.postgres_pitr import files
from tasks.components.postgres_pitr.instance import as_user
from tasks.components.postgres_pitr.settings import CONF_FILE, append_settings, conf_quote
from tasks.errors import ComponentFailed
from tasks.proc import run

# include 'file', include_dir 'dir', include_if_exists 'file': names are case-insensitive, '='
# is optional, the value quoted (doubled quotes inside) or a bare word
_INCLUDE = re.compile(
    r"^\s*(?P<kind>include_dir|include_if_exists|include)\b\s*=?\s*(?:'(?P<q>(?:[^']|'')*)'|(?P<bare>\S+))",
    re.IGNORECASE,
)
# where the server's files are: read from postgresql.conf before postgresql.auto.conf is found (by
# data_directory), so no later setting can win over them; the recovered instance's are -D's
_LOCATION = re.compile(r"^\s*(data_directory|config_file)\s*=?", re.IGNORECASE)
_LIBRARIES = ("shared_preload_libraries", "session_preload_libraries", "local_preload_libraries")

# the recovery's own client authentication, in the instance directory (the data directory's
# pg_hba.conf stays as backed up): the source's is for its network and may be hostssl-only, which a
# loopback instance without TLS never matches. Password logins on loopback (md5 accepts SCRAM
# secrets too), the socket for the OS user that owns the instance.
_HBA = """# knative-lambda-backup PITR: this recovered instance's own; the source's is data/pg_hba.conf
local all all peer
host all all 127.0.0.1/32 md5
"""


def host_settings(root: Path, major: int) -> dict[str, str]:
    """Settings that would name the source host's files, group or log place, given this host's
    (data_directory is not one: it decides where postgresql.auto.conf is, see _LOCATION)."""
    conf = {
        "hba_file": conf_quote(str(root / "pg_hba.conf")),
        "ident_file": conf_quote(str(root / "pg_ident.conf")),
        "external_pid_file": "''",
        # loopback only: TLS would need the source's certificate and key files
        "ssl": "off",
        "ssl_passphrase_command": "''",
        "unix_socket_group": "''",
        "unix_socket_permissions": "0700",
        "log_directory": "'log'",
    }
    if major <= 14:  # removed in 15; Debian points it at /run/postgresql/<version>-main.pg_stat_tmp
        conf["stats_temp_directory"] = "'pg_stat_tmp'"
    return conf


def _inside(path: Path, data: Path) -> bool:
    return path == data or data in path.parents


def _drop_foreign_includes(conf: Path, data: Path, warnings: list[str], seen: set[Path]) -> None:
    """Comment out every include of `conf` that is not a file or directory of the data directory
    (the source host's, absent here or someone else's); follow the ones that are."""
    if conf in seen or not conf.is_file():
        return
    seen.add(conf)
    lines, changed = files.read_text(conf).splitlines(keepends=True), False
    for i, line in enumerate(lines):
        if _LOCATION.match(line):
            lines[i], changed = "# knative-lambda-backup PITR, the source's location: " + line, True
            continue
        match = _INCLUDE.match(line)
        if not match:
            continue
        name = match["q"].replace("''", "'") if match["q"] is not None else match["bare"]
        path = Path(os.path.normpath(conf.parent / name))
        # through a link, a file inside may be one outside: what it resolves to must be inside
        if _inside(path, data) and path.exists() and _inside(path.resolve(), data.resolve()):
            inner = sorted(path.glob("*.conf")) if path.is_dir() else [path]
            for included in inner:
                _drop_foreign_includes(included, data, warnings, seen)
            continue
        lines[i] = "# knative-lambda-backup PITR, not on this host: " + line
        changed = True
        warnings.append(
            f"{match['kind'].lower()} '{name}' in {conf.name} left out: it is the source host's "
            "(not in the base backup); its settings do not apply to the recovered instance"
        )
    if changed:
        files.write_text(conf, "".join(lines))


def drop_foreign_includes(data: Path) -> list[str]:
    """The include directives of the source host's files and its data_directory/config_file,
    commented out; a warning for each include."""
    warnings: list[str] = []
    seen: set[Path] = set()
    for name in ("postgresql.conf", CONF_FILE):
        _drop_foreign_includes(data / name, data, warnings, seen)
    return warnings


def write_auth_files(root: Path, user: str | None) -> None:
    """The recovery's own pg_hba.conf and (empty) pg_ident.conf, which hba_file/ident_file name."""
    for name, text in (("pg_hba.conf", _HBA), ("pg_ident.conf", "")):
        files.write_text(root / name, text)
        (root / name).chmod(0o600)
        if user:
            files.give(root / name, user)


def _split(value: str) -> list[str]:
    return [part.strip().strip('"') for part in value.split(",") if part.strip().strip('"')]


def _list_item(name: str) -> str:
    return name if re.fullmatch(r"[\w$/.-]+", name) else '"' + name + '"'


def _installed(name: str, setting: str, libdir: str, search: list[str]) -> bool:
    """Whether PostgreSQL finds library `name` here, as its loader looks (dfmgr.c)."""
    if setting == "local_preload_libraries" and "/" not in name:
        name = "$libdir/plugins/" + name  # only plugins/ is searched for these
    if "/" in name:
        candidates = [Path(name.replace("$libdir", libdir, 1))]
    else:
        candidates = [Path(d.replace("$libdir", libdir, 1)) / name for d in search if d]
    return any(c.is_file() or c.with_name(c.name + ".so").is_file() for c in candidates)


# a locale or time zone the source host has and this one (a slim image) lacks stops the server
# ("configuration file contains errors"); they only format values, the data is the same
_HOST_NAMES = {"lc_monetary": "'C'", "lc_numeric": "'C'", "lc_time": "'C'"}
_HOST_NAMES |= {"timezone": "'UTC'", "log_timezone": "'UTC'"}
_INVALID = re.compile(r'invalid value for parameter "(\w+)": "([^"]*)"', re.IGNORECASE)


def _show(bindir: Path, data: Path, user: str, name: str) -> str:
    """A setting as the server will read it from the data directory (postgres -C, its own parser)."""
    return run([*as_user(user), str(bindir / "postgres"), "-D", str(data), "-C", name], timeout=60).strip()


def replace_missing_locales(bindir: Path, data: Path, user: str) -> list[str]:
    """Each locale or time zone setting this host does not have, set to C / UTC; a warning each.
    The server's own check (postgres -C) says which: it names the first invalid one, so again."""
    warnings: list[str] = []
    for _ in range(len(_HOST_NAMES) + 1):
        try:
            _show(bindir, data, user, "timezone")
            break
        except ComponentFailed as exc:
            bad = [m for m in _INVALID.finditer(str(exc)) if m[1].lower() in _HOST_NAMES]
            if not bad:
                raise
            for match in bad:
                name = match[1].lower()
                append_settings(data, {name: _HOST_NAMES[name]})
                warnings.append(
                    f"{name} = '{match[2]}' of the source is not available on this host: the recovered "
                    f"instance uses {_HOST_NAMES[name]} (values are formatted differently, the data is "
                    "the same); install that locale or time zone and set it again if needed"
                )
    return warnings


def check_libraries(bindir: Path, data: Path, user: str) -> tuple[dict[str, str], list[str]]:
    """The preload libraries installed on this host (settings to append) and a warning for each
    library left out. Values are read with the server's own parser (postgres -C), as it will."""
    libdir = run([str(bindir / "pg_config"), "--pkglibdir"], timeout=60).strip()
    search = _show(bindir, data, user, "dynamic_library_path").split(":")
    conf: dict[str, str] = {}
    warnings: list[str] = []
    for name in _LIBRARIES:
        listed = _split(_show(bindir, data, user, name))
        kept = [lib for lib in listed if _installed(lib, name, libdir, search)]
        if kept == listed:
            continue
        conf[name] = conf_quote(", ".join(_list_item(lib) for lib in kept))
        warnings += [
            f"{name}: library {lib!r} is not installed on this host and was left out of the recovered "
            f"instance (the data does not need it): install it (and add it back to {name}) before "
            "using what needs it"
            for lib in listed
            if lib not in kept
        ]
    return conf, warnings
