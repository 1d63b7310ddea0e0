"""Where metrics go: a Prometheus Pushgateway. Off when neither the block nor the env is set."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from blocks.strict import StrictBlock, without_credentials


class PushgatewayConfig(StrictBlock):
    _block_type_name = "KLB Pushgateway"
    _block_type_slug = "klb-pushgateway"
    _description = "Prometheus Pushgateway that every backup, verify, restore and drill run pushes to."

    url: str = Field(description="e.g. http://prometheus-pushgateway.monitoring:9091")
    username: str | None = Field(default=None, description="basic auth user, if the gateway wants one")
    password: SecretStr | None = None
    timeout_seconds: float = Field(default=10, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        return without_credentials(url)


class NotificationRouting(StrictBlock):
    """Which Prefect notification blocks hear each severity (the runbook's "Escalation").

    Entries are block references "<block-type-slug>/<name>", e.g. "slack-webhook/platform",
    "sendgrid-email/oncall", "custom-webhook/incident-api". P0: backup system down (runs crash,
    the work pool is not ready: notify platform team + on-call SRE). P1: a backup, restore, drill,
    DR copy or sweep failed (incident ticket + platform team). P2: warnings (late runs, leftovers).
    """

    _block_type_name = "KLB Notification Routing"
    _block_type_slug = "klb-notification-routing"
    _description = "P0/P1/P2 routing of knative-lambda-backup alerts to Prefect notification blocks."

    p0: list[str] = Field(default_factory=list, description="backup system down")
    p1: list[str] = Field(default_factory=list, description="a backup (or restore, drill, sweep) failed")
    p2: list[str] = Field(default_factory=list, description="warnings")
    work_pool: str | None = Field(default=None, description="work pool whose not-ready state is a P0")
