"""Where RabbitMQ's management API is, and whose credentials it takes."""

from __future__ import annotations

import httpx
from pydantic import Field, SecretStr, field_validator

from blocks.strict import StrictBlock, without_credentials


class RabbitMQTarget(StrictBlock):
    _block_type_name = "KLB RabbitMQ Target"
    _block_type_slug = "klb-rabbitmq-target"
    _description = "A RabbitMQ broker's management HTTP API: definitions backup and restore."

    url: str = Field(default="http://127.0.0.1:15672", description="management API base URL")
    username: str = Field(default="guest", description="a user with the 'administrator' tag")
    password: SecretStr = Field(default=SecretStr("guest"))
    vhosts: list[str] | None = Field(
        default=None,
        description="back up only these vhosts (one object each); empty: the whole broker "
        "(users, vhosts, permissions, policies, queues, exchanges, bindings, parameters)",
    )
    ca_cert_path: str | None = Field(default=None, description="CA bundle for an https:// URL")
    verify_tls: bool = True
    timeout_seconds: float = Field(default=60, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        without_credentials(url)  # first: the message below quotes the URL
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url {url!r} must start with http:// or https://")
        return url.rstrip("/")

    @field_validator("vhosts")
    @classmethod
    def _vhosts(cls, vhosts: list[str] | None) -> list[str] | None:
        if vhosts is not None and (not vhosts or len(set(vhosts)) != len(vhosts) or "" in vhosts):
            raise ValueError("vhosts must be a non-empty list of distinct names (or empty for all)")
        return vhosts

    def client(self) -> httpx.Client:
        """Basic auth through httpx: the password is in the Authorization header only, never logged."""
        verify: bool | str = self.ca_cert_path or self.verify_tls
        return httpx.Client(
            base_url=f"{self.url}/api",
            auth=(self.username, self.password.get_secret_value()),
            timeout=self.timeout_seconds,
            verify=verify,
            headers={"content-type": "application/json"},
        )
