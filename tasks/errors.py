"""Errors the operator sees. Each message says what went wrong and what to do next."""


class BackupError(Exception):
    """Base class: a clear, user-facing failure. Never carries secrets."""

    retryable = False


class BadInput(BackupError, ValueError):
    """A parameter or block value is invalid; nothing was changed."""


class NotFound(BackupError, LookupError):
    """The requested backup, component or object does not exist."""


class IntegrityError(BackupError):
    """Stored data does not match its manifest (size, sha256, authentication tag)."""


class WrongKeyOrAltered(IntegrityError):
    """The first encrypted record of an object does not authenticate: the key is wrong, or the
    data was altered; nothing can tell which. Not recorded as damage (a typo in a key must not
    mark a good backup damaged); later records failing prove the key right and are damage."""


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
