"""The API server's errors: a Kubernetes Status body with its HTTP code."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    def status(self) -> dict[str, Any]:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        }


def not_found(res: Any, name: str) -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f'{res.group_resource} "{name}" not found',
        {"name": name, "group": res.group, "kind": res.plural},
    )
