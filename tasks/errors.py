"""Errors the operator sees. Each message says what went wrong and what to do next."""


class BackupError(Exception):
    """Base class: a clear, user-facing failure. Never carries secrets."""

    retryable = False


class BadInput(BackupError, ValueError):
    """A parameter or block value is invalid; nothing was changed."""


class IsolationTaken(BadInput):
    """The name a drill or restore would put its isolated copy under (a side database, a drill
    namespace or vhost) is taken by something it did not create: refused, and that is left as is
    (never cleaned up as if it were a crashed drill's)."""


class NotFound(BackupError, LookupError):
    """The requested backup, component or object does not exist."""


class IntegrityError(BackupError):
    """Stored data does not match its manifest (size, sha256, authentication tag)."""

    # False when a wrong key explains the failure as well as damage does (the FIRST encrypted
    # record does not authenticate): then it is not recorded as damage, so a typo in a key
    # never marks a good backup damaged (tasks/storage/health.py)
    proves_damage = True


def target_untouched(exc: BaseException) -> BaseException:
    """Mark a restore's failure as raised before it changed its target (tasks/operations/restores.py:
    a rollback then has nothing to undo, and must not put an older copy over newer writes)."""
    exc.target_untouched = True  # type: ignore[attr-defined]
    return exc


def ambiguous_key_error(message: str) -> IntegrityError:
    exc = IntegrityError(message)
    exc.proves_damage = False
    return exc


class KeyNotHeld(IntegrityError):
    """An encrypted object names a key (by id) that the store does not hold: the data may be
    fine, the store's keys are not (docs/encryption-format.md, key rotation)."""

    proves_damage = False  # the store lacks a key: the backup itself may be sound


class ConfigurationError(BackupError):
    """A target or store is not configured, unreachable, or refuses our credentials."""


class ComponentFailed(BackupError):
    """The engine of a component (pg_dump, Velero, etcdctl, a script) reported a failure."""


class TransientError(BackupError):
    """A failure worth retrying (network blip, throttling, a server restarting)."""

    retryable = True


def is_retryable(exc: BaseException) -> bool:
    """Prefect retry condition: retry only what may succeed on a second try."""
    if isinstance(exc, BackupError):
        return exc.retryable
    return isinstance(exc, (ConnectionError, TimeoutError))
