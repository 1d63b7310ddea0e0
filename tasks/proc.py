"""Run engines (pg_dump, etcdctl, scripts) as argv lists, never through a shell.

stdout streams through the caller in bounded chunks; stderr is kept (bounded) for the error
message and the logs; a non-zero exit, a signal or a timeout raises ComponentFailed.
Secrets go in `env`, never in argv.
"""

from __future__ import annotations

import ctypes
import fcntl
import glob
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import termios
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING

from tasks.errors import ComponentFailed, ConfigurationError

if TYPE_CHECKING:
    from pathlib import Path

log = logging.getLogger(__name__)
# env vars whose values are hidden from error messages and logs even if a command prints them
SECRET_ENV_RE = re.compile(r"PASS|SECRET|TOKEN|KEY|CREDENTIAL|AUTH", re.IGNORECASE)
STDERR_KEEP = 64 * 1024
CHUNK = 1024 * 1024
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


class _StderrTail(threading.Thread):
    def __init__(self, stream) -> None:
        super().__init__(daemon=True)
        self.stream, self.lines, self.size = stream, deque(), 0

    def run(self) -> None:
        for raw in iter(self.stream.readline, b""):
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            self.size += len(line)
            while self.size > STDERR_KEEP and self.lines:
                self.size -= len(self.lines.popleft())

    def text(self) -> str:
        self.join(timeout=5)
        return "\n".join(self.lines)


def _die_with_us(parent: int):
    """Engines die with the flow process (Linux PR_SET_PDEATHSIG): if the flow is killed mid-restore,
    a restore command must not see a clean end of its input and cut over to half the data."""
    if _PRCTL is None:
        return None

    def set_pdeathsig() -> None:  # runs in the child between fork and exec: one syscall, no imports
        _PRCTL(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(137)

    return set_pdeathsig


def _inherited() -> dict[str, str]:
    """The flow process's environment for a child, without the Prefect API credentials the worker
    gives every flow pod (PREFECT_API_KEY, PREFECT_API_AUTH_STRING): no engine needs them, and a
    child's environment is readable in /proc/<pid>/environ and inherited by all it starts (a
    restored PostgreSQL's restore_command, an app-state step's own tools). What a caller passes
    in `env` explicitly still goes."""
    return {k: v for k, v in os.environ.items() if not (k.startswith("PREFECT_") and SECRET_ENV_RE.search(k))}


def inherited_secrets(keep: Iterable[str] = ()) -> dict[str, None]:
    """Every variable of ours whose name looks secret (a password, an access key, a token), as
    None: given in a child's `env` it is not passed on. For children that outlive the call or run
    commands of their own (a recovered PostgreSQL and its restore_command, an app-state step),
    which must get only the credentials meant for them. `keep` names ones they need."""
    return {name: None for name in os.environ if SECRET_ENV_RE.search(name) and name not in keep}


def _spawn(
    argv: Sequence[str],
    env: Mapping[str, str | None] | None,
    cwd: str | None,
    stdin,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
) -> subprocess.Popen:
    if isinstance(argv, str) or not argv:
        raise ConfigurationError("a command must be a non-empty list of arguments, not a shell string")
    # a None value removes an inherited variable (PGPASSWORD would beat our password file)
    full_env = {k: v for k, v in {**_inherited(), **(env or {})}.items() if v is not None}
    try:
        return subprocess.Popen(
            list(argv),
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with_us(os.getpid()),
        )
    except FileNotFoundError:
        if cwd and not os.path.isdir(cwd):  # Popen says ENOENT for a missing cwd as well
            raise ConfigurationError(
                f"working directory {cwd} does not exist (create it or fix the target's cwd)"
            ) from None
        raise ConfigurationError(
            f"command not found: {argv[0]} (install it or fix the target's command)"
        ) from None
    except PermissionError:
        raise ConfigurationError(f"command not executable: {argv[0]}") from None


class _Watchdog:
    def __init__(self, proc: subprocess.Popen, timeout: float | None) -> None:
        self.fired = False
        self._timer = threading.Timer(timeout, self._kill, args=(proc,)) if timeout else None
        if self._timer:
            self._timer.daemon = True
            self._timer.start()

    def _kill(self, proc: subprocess.Popen) -> None:
        self.fired = True
        proc.kill()

    def cancel(self) -> None:
        if self._timer:
            self._timer.cancel()


def _hidden(env: Mapping[str, str | None] | None, redact: Iterable[str]) -> list[str]:
    """The secret values of this command: explicit ones and those of secret-looking env names."""
    values = {v for v in redact if v}
    values |= {v for k, v in (env or {}).items() if v and SECRET_ENV_RE.search(k)}
    return sorted((v for v in values if len(v) >= 4), key=len, reverse=True)


def _redact(text: str, hidden: list[str]) -> str:
    for value in hidden:
        text = text.replace(value, "***")
    return text


def _finish(
    proc: subprocess.Popen,
    stderr: _StderrTail,
    name: str,
    dog: _Watchdog,
    timeout,
    hidden: list[str],
    ok_codes: Iterable[int] = (0,),
) -> str:
    rc = proc.wait()
    dog.cancel()
    err = _redact(stderr.text(), hidden)  # a command may echo its password in an error
    for line in err.splitlines()[-20:]:
        log.info("%s: %s", name, line)
    if dog.fired:
        raise ComponentFailed(f"{name} timed out after {timeout}s and was killed")
    if rc not in ok_codes:
        tail = "\n".join(err.splitlines()[-8:]) or "(no error output)"
        how = f"was killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
        raise ComponentFailed(f"{name} {how}:\n{tail}")
    return err


@contextmanager
def stream_stdout(
    argv: Sequence[str],
    env: Mapping[str, str | None] | None = None,
    cwd: str | None = None,
    timeout: float | None = None,
    name: str | None = None,
    redact: Iterable[str] = (),
    ok_codes: Iterable[int] = (0,),
    stdin: bytes | None = None,
) -> Iterator[Iterator[bytes]]:
    """`with stream_stdout([...]) as out: store.write(name, out)`; raises if the command failed
    (an exit status not in `ok_codes`). Values in `redact` (and of secret-looking env names) never
    reach messages or logs."""
    name = name or os.path.basename(argv[0])
    hidden = _hidden(env, redact)
    proc = _spawn(argv, env, cwd, subprocess.DEVNULL if stdin is None else subprocess.PIPE)
    if stdin is not None:  # small (within the pipe's buffer): written whole before reading
        with suppress(BrokenPipeError):
            proc.stdin.write(stdin)
        with suppress(BrokenPipeError):
            proc.stdin.close()
    stderr = _StderrTail(proc.stderr)
    stderr.start()
    dog = _Watchdog(proc, timeout)

    def chunks() -> Iterator[bytes]:
        while data := proc.stdout.read1(CHUNK):
            yield data
        # the stream ended: it counts only if the command succeeded
        _finish(proc, stderr, name, dog, timeout, hidden, ok_codes)

    try:
        yield chunks()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        dog.cancel()
        proc.stdout.close()


class _InputWatch:
    """Whether a command read all of its stdin: we keep our own copy of the pipe's read end, so
    when the command exits the bytes it left unread are still countable (FIONREAD), even those
    that fit in the pipe's buffer and never made a write fail. Closing that copy then makes a
    write still blocked on the full pipe fail (EPIPE) instead of waiting forever."""

    def __init__(self, proc: subprocess.Popen, read_end: int) -> None:
        self.unread = 0
        self._proc, self._fd = proc, read_end
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        self._proc.wait()
        buf = bytearray(4)
        with suppress(OSError):
            fcntl.ioctl(self._fd, termios.FIONREAD, buf)
            self.unread = int.from_bytes(buf, sys.byteorder)
        os.close(self._fd)

    def join(self) -> None:
        self._thread.join()


def feed_stdin(
    argv: Sequence[str],
    chunks: Iterable[bytes],
    env: Mapping[str, str | None] | None = None,
    cwd: str | None = None,
    timeout: float | None = None,
    name: str | None = None,
    redact: Iterable[str] = (),
    read_all: bool = False,
) -> str:
    """Stream `chunks` into the command's stdin; return its stdout (bounded). Raises on failure.
    `read_all`: the command must also read its input to the end (a restore script that stopped
    half-way and exited 0 restored only part of the state); otherwise it may stop reading early
    (pg_restore does) and its exit status alone decides."""
    name = name or os.path.basename(argv[0])
    hidden = _hidden(env, redact)
    if read_all:
        read_end, write_end = os.pipe()
        try:
            proc = _spawn(argv, env, cwd, read_end)
        except BaseException:
            os.close(read_end)
            os.close(write_end)
            raise
        proc.stdin = open(write_end, "wb")  # noqa: SIM115 - closed below, as Popen's own pipe is
        watch: _InputWatch | None = _InputWatch(proc, read_end)
    else:
        proc, watch = _spawn(argv, env, cwd, subprocess.PIPE), None
    stderr = _StderrTail(proc.stderr)
    stderr.start()
    out: deque[bytes] = deque(maxlen=64)
    reader = threading.Thread(
        target=lambda: out.extend(iter(lambda: proc.stdout.read1(CHUNK), b"")), daemon=True
    )
    reader.start()
    dog = _Watchdog(proc, timeout)
    complete = False
    try:
        for chunk in chunks:
            proc.stdin.write(chunk)
        proc.stdin.close()
        complete = True
    except BrokenPipeError:
        pass  # the command stopped reading; its exit status says why
    except BaseException:
        proc.kill()
        proc.wait()
        dog.cancel()
        raise
    finally:
        if not proc.stdin.closed:
            with suppress(BrokenPipeError):
                proc.stdin.close()
    _finish(proc, stderr, name, dog, timeout, hidden)
    reader.join(timeout=5)
    if watch is not None:
        watch.join()
        if not complete or watch.unread:
            why = f"{watch.unread} bytes left unread" if complete else "stopped reading before the end"
            raise ComponentFailed(
                f"{name} exited with status 0 but did not read all of its input ({why}): it "
                "restored only part of the state. Make the command read its stdin to the end."
            )
    return _redact(b"".join(out).decode(errors="replace"), hidden)


def run(
    argv: Sequence[str],
    env: Mapping[str, str | None] | None = None,
    cwd: str | None = None,
    timeout: float | None = 120,
    name: str | None = None,
    redact: Iterable[str] = (),
    ok_codes: Iterable[int] = (0,),
    stdin: bytes | None = None,
) -> str:
    """Run a short command and return its stdout; raises ComponentFailed on failure (an exit
    status not in `ok_codes`). `stdin`: a few bytes the command reads first (a password it
    prompts for: never argv or environment)."""
    with stream_stdout(argv, env, cwd, timeout, name, redact, ok_codes, stdin) as out:
        return b"".join(out).decode(errors="replace")


def start(argv: Sequence[str], log: Path, env: Mapping[str, str | None] | None = None) -> subprocess.Popen:
    """Start a server (a throwaway etcd member, say) in the background, stdout and stderr into
    `log`; it dies with the flow process. Stop it with `stop`."""
    with open(log, "wb") as out:
        return _spawn(argv, env, None, subprocess.DEVNULL, out, subprocess.STDOUT)


def start_piped(
    argv: Sequence[str], err: Path, env: Mapping[str, str | None] | None = None
) -> subprocess.Popen:
    """Start a helper we talk to over its stdin and stdout (byte pipes), stderr into `err`; it
    dies with the flow process, and ends when we close its stdin."""
    with open(err, "wb") as out:
        return _spawn(argv, env, None, subprocess.PIPE, subprocess.PIPE, out)


def stop(proc: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM to the server's process group, SIGKILL if it is still there after `timeout`."""
    if proc.poll() is not None:
        return
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path))


def find_binary(
    name: str, dirs: Iterable[str | os.PathLike] = (), path: bool = True, missing: str | None = None
) -> str | None:
    """Where the engine command `name` is: `name` itself if it is a path; else the first of `dirs`
    that holds it executable (a pattern such as /usr/lib/postgresql/*/bin is searched newest
    version first); else, if `path`, on PATH. None if nowhere, or ConfigurationError(`missing`)."""
    search: list[str] = []
    for d in map(str, dirs):
        matches = glob.glob(d) if glob.has_magic(d) else [d]
        search += sorted(matches, key=_version_key, reverse=True)
    found = shutil.which(name, path=os.pathsep.join(search)) if search or os.sep in name else None
    if not found and path:
        found = shutil.which(name)
    if not found and missing:
        raise ConfigurationError(missing)
    return found


def free_port() -> int:
    """A free TCP port on loopback, for a throwaway server an engine starts (drill members,
    recovered instances). Another process may take it before ours binds: callers that start a
    server retry on a bind failure."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
