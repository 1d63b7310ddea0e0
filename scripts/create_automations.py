"""Create (or update) the Prefect automations that alert on knative-lambda-backup runs.

    PREFECT_API_URL=... python -m scripts.create_automations --routing <routing-block-name>

Idempotent: automations are found by name and updated in place; run it after every change of the
routing block. Automations live in the Prefect server, so a flow process that crashes (OOM-killed
pod, lost node) still alerts: the server sees the Crashed state and sends the notification.

    klb-p0-flow-crashed        a run of our flows Crashed                  -> P0 blocks
    klb-p0-work-pool-not-ready the work pool has no ready worker           -> P0 blocks (with work_pool)
    klb-p1-flow-failed         a run of our flows Failed                   -> P1 blocks
    klb-p2-flow-late           a scheduled run of our flows did not start  -> P2 blocks
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from prefect.automations import Automation, EventTrigger, Posture, SendNotification

from tasks.errors import ConfigurationError
from tasks.notify import Severity, load_notifier, load_routing, targets

# every flow that backs up, restores, rolls back or proves a restore: a Failed or Crashed run alerts
# (tests/drill/test_restore_alerts.py checks that every restore-type flow under flows/ is here)
FLOWS = (
    "backup-component",
    "backup-all",
    "restore-component",
    "restore-with-checklist",
    "rollback-restore",
    "restore-drill",
    "pitr-postgres",
    "promote-pitr",
    "pitr-kubernetes",
    "check-wal-archive",
    "rollback-postgres",
    "cleanup-postgres-rollbacks",
    "namespace-corruption",
    "data-corruption",
    "partial-restore",
    "full-cluster-restore",
    "verify-backups",
    "enforce-retention",
)
BODY = (
    "Flow run {{ flow_run.name }} of {{ flow.name }} is {{ flow_run.state.name }}.\n"
    "{{ flow_run.state.message }}\n"
    "Parameters: {{ flow_run.parameters }}\n"
    "See docs/operations.md (alerts and escalation)."
)


@dataclass(frozen=True)
class Spec:
    name: str
    severity: Severity
    event: str
    description: str
    flow_scoped: bool = True


SPECS = (
    Spec("klb-p0-flow-crashed", Severity.P0, "prefect.flow-run.Crashed", "a backup-system process crashed"),
    Spec("klb-p1-flow-failed", Severity.P1, "prefect.flow-run.Failed", "a backup-system run failed"),
    Spec("klb-p2-flow-late", Severity.P2, "prefect.flow-run.Late", "a scheduled run did not start on time"),
)


def _trigger(spec: Spec, work_pool: str | None = None) -> EventTrigger:
    if not spec.flow_scoped:
        return EventTrigger(
            expect={spec.event},
            match={"prefect.resource.name": work_pool},
            posture=Posture.Reactive,
            threshold=1,
        )
    return EventTrigger(
        expect={spec.event},
        match={"prefect.resource.id": "prefect.flow-run.*"},
        match_related={"prefect.resource.role": "flow", "prefect.resource.name": list(FLOWS)},
        posture=Posture.Reactive,
        threshold=1,
    )


def desired(routing_ref: str | None = None) -> list[Automation]:
    routing = load_routing(routing_ref)
    if routing is None:
        raise ConfigurationError(
            "no notification routing: pass --routing <block name> or set KLB_NOTIFY_ROUTING "
            "(a 'klb-notification-routing' block listing the notification blocks for P0, P1 and P2)"
        )
    specs = list(SPECS)
    if routing.work_pool:
        specs.append(
            Spec(
                "klb-p0-work-pool-not-ready",
                Severity.P0,
                "prefect.work-pool.not-ready",
                f"work pool {routing.work_pool} has no ready worker",
                flow_scoped=False,
            )
        )
    out = []
    for spec in specs:
        refs = targets(routing, spec.severity)
        if not refs:
            continue  # nobody to tell at this severity
        actions = [
            SendNotification(
                block_document_id=load_notifier(ref)._block_document_id,
                subject=f"[{spec.severity}] knative-lambda-backup: {spec.description}",
                body=BODY,
            )
            for ref in refs
        ]
        out.append(
            Automation(
                name=spec.name,
                description=f"{spec.severity}: {spec.description} (scripts/create_automations.py)",
                enabled=True,
                trigger=_trigger(spec, routing.work_pool),
                actions=actions,
            )
        )
    if not out:
        raise ConfigurationError("the routing block lists no notification block for any severity")
    return out


def apply(routing_ref: str | None = None) -> dict[str, str]:
    """Create missing automations, update existing ones (by name). Returns name -> created/updated."""
    done = {}
    for automation in desired(routing_ref):
        try:
            existing = Automation.read(name=automation.name)
        except ValueError:
            automation.create()
            done[automation.name] = "created"
            continue
        automation.id = existing.id
        automation.update()
        done[automation.name] = "updated"
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--routing", help="name of the klb-notification-routing block")
    args = parser.parse_args(argv)
    try:
        for name, what in apply(args.routing).items():
            print(f"{what}: {name}")
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
