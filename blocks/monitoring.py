"""Where metrics go: a Prometheus Pushgateway. Off when neither the block nor the env is set."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr


class PushgatewayConfig(Block):
    _block_type_name = "KLB Pushgateway"
    _block_type_slug = "klb-pushgateway"
    _description = "Prometheus Pushgateway that every backup, verify, restore and drill run pushes to."

    url: str = Field(description="e.g. http://prometheus-pushgateway.monitoring:9091")
    username: str | None = Field(default=None, description="basic auth user, if the gateway wants one")
    password: SecretStr | None = None
    timeout_seconds: float = Field(default=10, gt=0)
