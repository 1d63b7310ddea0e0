"""Drill: restore into `restore-drill-<id>` namespaces with deployments at 0 replicas, verify, clean up."""

from __future__ import annotations

import logging
import re
import secrets
import time
from typing import Any

from blocks.kubernetes import VeleroTarget
from blocks.store import StoreBlock
from tasks.components.kubernetes import api as kube
from tasks.components.kubernetes import claims, custom
from tasks.components.kubernetes.api import connect
from tasks.components.kubernetes.backups import load_document
from tasks.components.kubernetes.named import aside_name
from tasks.components.kubernetes.ports import node_port_rules
from tasks.components.kubernetes.restores import RestoreOptions, _plan, _present
from tasks.components.kubernetes.velero import get_backup_cr, preflight, run_restore
from tasks.errors import IntegrityError, IsolationTaken
from tasks.models import Manifest
from tasks.timing import rounded, timed

log = logging.getLogger(__name__)
SCALE_TO_ZERO = {
    "version": "v1",
    "resourceModifierRules": [
        {
            "conditions": {"groupResource": "deployments.apps", "resourceNameRegex": ".*"},
            "patches": [{"operation": "replace", "path": "/spec/replicas", "value": "0"}],
        }
    ],
}


def drill_namespaces(doc: dict[str, Any], drill_id: str) -> dict[str, str]:
    token = re.sub(r"[^a-z0-9-]", "-", drill_id.lower()).strip("-")[:30] or "x"
    sources = sorted(doc["inventory"])
    if len(sources) == 1:
        return {sources[0]: f"restore-drill-{token}"}
    return {ns: aside_name("restore-drill", token, ns) for ns in sources}


def drill(target: VeleroTarget, manifest: Manifest, store: StoreBlock, drill_id: str) -> dict[str, Any]:
    """Restore into `restore-drill-<id>` namespaces with every deployment at 0 replicas (the drill's
    apps must not talk to production), verify every object of the inventory, always clean up."""
    doc = load_document(store, manifest)
    k = connect(target.kube)
    preflight(k, target)
    get_backup_cr(k, target, doc["backup"]["metadata"]["name"])
    mapping = drill_namespaces(doc, drill_id)
    taken = [ns for ns in mapping.values() if kube.namespace_exists(k, ns)]
    if taken:
        raise IsolationTaken(
            f"drill namespaces {taken} exist already (an earlier drill?): delete them or use another id"
        )
    created = list(mapping.values())
    token = secrets.token_hex(4)
    try:
        namespaces, _ = _plan(doc, RestoreOptions(namespace_mapping=mapping, restore_pvs=True))
        spec = {
            "backupName": doc["backup"]["metadata"]["name"],
            "includedNamespaces": namespaces,
            "namespaceMapping": mapping,
            "restorePVs": True,
            "existingResourcePolicy": "none",
        }
        # deployments at 0, and pods only as volume-restore helpers: the drill's apps never run
        rules = SCALE_TO_ZERO["resourceModifierRules"] + claims.helper_pod_rules(token)
        # copies beside the originals: no nodePort another Service holds (ports.py)
        rules += node_port_rules(k, doc, namespaces, mapping)
        seconds: dict[str, float] = {}  # per phase: what a drill's RTO is made of
        with timed(seconds, "velero restore"), claims.resource_modifier(k, target, rules) as modifier:
            spec["resourceModifier"] = modifier
            cr = run_restore(k, target, spec["backupName"], spec, None, manifest.id)
        # the helper pods stay: the drill's apps are at 0 (nothing waits for the claims), and the
        # drill namespaces go at the end with everything in them
        checks: dict[str, Any] = {}
        checking = time.monotonic()
        for ns, kinds_ in doc["inventory"].items():
            for plural, held in kinds_.items():
                # not what the cluster made in the drill namespace (older inventories hold it)
                objs = kube.workload_names(plural, held)
                unserved: set[str] = set()  # a custom kind whose CRD the cluster lacks (custom.py)
                present = _present(k, mapping[ns], plural, unserved)
                missing = sorted(set(objs) - present)
                if missing:
                    hint = custom.missing_crd_hint(unserved) if unserved else ""
                    lacks = f"{mapping[ns]}/{plural} lacks {missing[:10]}"
                    raise IntegrityError(f"drill {drill_id}: {lacks}.{hint}")
                checks[f"{ns}/{plural}"] = {"expected": len(objs), "restored": len(set(objs) & present)}
            running = [
                d.metadata.name for d in kube.list_deployments(k, mapping[ns]) if (d.spec.replicas or 0) != 0
            ]
            if running:
                raise IntegrityError(f"drill {drill_id}: deployments {running} in {mapping[ns]} are not at 0")
        seconds["inventory check"] = time.monotonic() - checking
        with timed(seconds, "claims bound"):
            pvcs = claims.wait_bound(
                k,
                target,
                [
                    (mapping[ns], p)
                    for ns, kinds_ in doc["inventory"].items()
                    for p in kinds_.get("persistentvolumeclaims", [])
                ],
                target.restore_timeout_seconds,
            )
        return {
            "verified": True,
            "velero_restore": cr["metadata"]["name"],
            "namespaces": mapping,
            # "<namespace>/<kind>": counts; "seconds": where the drill's RTO went
            "checks": {**checks, "seconds": rounded(seconds)},
            "claims": pvcs,
        }
    finally:
        for ns in created:
            try:
                kube.delete_namespace(k, ns, interval=target.poll_interval_seconds)
            except Exception as exc:
                log.error("could not delete drill namespace %s: %s", ns, exc)


def drill_cleanup(target: VeleroTarget, drill_id: str) -> None:
    """Delete the `restore-drill-<id>*` namespaces a crashed drill left."""
    k = connect(target.kube)
    token = re.sub(r"[^a-z0-9-]", "-", drill_id.lower()).strip("-")[:30] or "x"
    for ns in kube.list_namespaces(k):
        if ns == f"restore-drill-{token}" or ns.startswith(f"restore-drill-{token}-"):
            kube.delete_namespace(k, ns, interval=target.poll_interval_seconds)
