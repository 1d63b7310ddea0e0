"""The one place botocore errors become the project's errors, with messages that say what to do.

    with s3_errors(bucket, key):
        client.put_object(...)

NotFound (no such object), ConfigurationError (no bucket, refused credentials, unreachable or
non-S3 endpoint, TLS to a plain-http port), TransientError (throttling, 5xx, timeouts: retry),
IntegrityError (the object changed between two reads). Anything else passes through unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
    SSLError,
)
from botocore.parsers import ResponseParserError

from tasks.errors import ConfigurationError, IntegrityError, NotFound, TransientError

CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "AccessDenied",
        "InvalidToken",
        "TokenRefreshRequired",
        "403",
    }
)
THROTTLE_CODES = frozenset({"SlowDown", "RequestTimeout", "ServiceUnavailable"})
# an HTTP HEAD has no body: S3 itself answers those with a bare status code
_BODYLESS_OPERATIONS = frozenset({"HeadObject", "HeadBucket"})


def error_code(exc: BaseException) -> str:
    return getattr(exc, "response", {}).get("Error", {}).get("Code", "")


def _not_s3(where: str, detail: str) -> ConfigurationError:
    return ConfigurationError(
        f"the endpoint for {where} does not answer like S3 ({detail}): check endpoint_url in the "
        "store block's credentials (aws_client_parameters); it must be the S3 API's address and port, "
        "not a web console or another service"
    )


def s3_error(exc: BaseException, bucket: str, key: str = "") -> BaseException:
    """The project's error for a botocore error on `bucket`/`key`; `exc` itself if not one."""
    where = f"s3://{bucket}/{key}" if key else f"s3://{bucket}"
    if isinstance(exc, NoCredentialsError):
        return ConfigurationError("no AWS credentials: set them in the S3 store block's credentials")
    if isinstance(exc, SSLError):
        return ConfigurationError(
            f"TLS with the S3 endpoint for {where} failed ({str(exc)[-120:]}): if the server speaks "
            "plain HTTP, write endpoint_url as http://...; otherwise fix its certificate or CA bundle"
        )
    if isinstance(exc, EndpointConnectionError):
        return ConfigurationError(f"cannot reach the S3 endpoint for {where}: check endpoint_url / network")
    if isinstance(exc, ReadTimeoutError):
        return TransientError(f"S3 read timed out on {where}")
    if isinstance(exc, ResponseParserError):
        return _not_s3(where, "its answer is not an S3 response")
    if isinstance(exc, ClientError):
        code = error_code(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in ("PreconditionFailed", "412"):
            return IntegrityError(f"{where} changed while it was being read: read it again")
        if code == "NoSuchBucket":
            return ConfigurationError(f"bucket {bucket} does not exist: create it or fix the store block")
        if (
            code.isdigit()
            and exc.operation_name not in _BODYLESS_OPERATIONS
            and (400 <= status < 500 or status == 501)
        ):
            # S3 always explains an error in an XML body; a bare status is some other server
            return _not_s3(where, f"HTTP {status} {exc.response.get('Error', {}).get('Message', '')}".strip())
        if code in ("NoSuchKey", "404", "NoSuchVersion"):
            return NotFound(f"object {where} does not exist")
        if code in CREDENTIAL_CODES:
            return ConfigurationError(
                f"S3 refused our credentials for {where} ({code}): renew or fix the AWS credentials block"
            )
        if status >= 500 or code in THROTTLE_CODES:
            return TransientError(f"S3 is failing on {where} ({code or status}); retry later")
        return ConfigurationError(f"S3 error on {where}: {code}")
    return exc


@contextmanager
def s3_errors(bucket: str, key: str = "") -> Iterator[None]:
    """Raise the project's error (see s3_error) for any botocore error inside the block."""
    try:
        yield
    except Exception as exc:
        mapped = s3_error(exc, bucket, key)
        if mapped is exc:
            raise
        raise mapped from None
