"""Component "volumes": persistent volumes through Velero (volume snapshots or file-system backup).

The same engine as component "kubernetes" (tasks/components/kubernetes/), restricted to PVCs and PVs, and
one more check: every backed-up PVC must have its data in the backup (a snapshot or a
file-system backup), or a "volume backup" would hold only the claims.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import Field

from blocks.kubernetes import VeleroTarget
from blocks.store import StoreBlock
from tasks.components import kubernetes as velero
from tasks.components.contract import target_from_env
from tasks.components.kubernetes.api import connect
from tasks.components.kubernetes.expiry import keep_until as keep_until  # Velero's expiry, as kubernetes
from tasks.components.kubernetes.quiesce import users_of
from tasks.components.kubernetes.restores import _present
from tasks.components.kubernetes.velero import pod_volume_backups
from tasks.components.kubernetes.written import wrote as _wrote
from tasks.errors import BadInput, ComponentFailed, target_untouched
from tasks.models import Manifest
from tasks.storage.session import BackupSession

log = logging.getLogger(__name__)
Target = VeleroTarget
VOLUME_RESOURCES = ["persistentvolumeclaims", "persistentvolumes"]
PVC_NAME = "velero.io/pvc-name"  # a PodVolumeBackup's claim (podvolume/configs)


def default_target() -> VeleroTarget:
    return target_from_env(VeleroTarget, "volumes", "KLB_VOLUMES_TARGET", "KLB_VELERO_TARGET")  # type: ignore[return-value]


def spec(target: VeleroTarget, **overrides: Any) -> velero.BackupSpec:
    fs = overrides.get("default_volumes_to_fs_backup", target.default_volumes_to_fs_backup)
    snapshots = target.snapshot_volumes if target.snapshot_volumes is not None else not fs
    base = {
        # fs-backup reads through running pods: they must be in the backup (and running: back up
        # before quiescing, e.g. data_corruption's forensic backup)
        "include_resources": VOLUME_RESOURCES + (["pods"] if fs else []),
        "exclude_resources": [],
        "snapshot_volumes": snapshots,
        "default_volumes_to_fs_backup": fs,
    }
    return velero.BackupSpec.of(target, **{**base, **overrides})


def run_backup(
    target: VeleroTarget, session: BackupSession, backup_spec: velero.BackupSpec
) -> dict[str, Any]:
    doc = velero.run_backup(target, session, backup_spec)
    pvcs = sum(len(kinds.get("persistentvolumeclaims", [])) for kinds in doc["inventory"].values())
    if pvcs == 0:
        raise BadInput(
            f"no PVCs in namespaces {sorted(doc['inventory'])}: nothing to back up as volumes "
            f"(Velero backup {session.id} holds no volume data)"
        )
    described = doc["describe"]
    snaps = described["volume_snapshots"]
    with_data = snaps["completed"] + snaps["csi_completed"] + snaps.get("data_mover_completed", 0)
    with_data += sum(1 for p in described["fs_backups"] if p["phase"] == "Completed")
    if with_data < pvcs:
        raise ComponentFailed(
            f"Velero backup {session.id} holds {pvcs} PVCs but the data of only {with_data} volumes "
            "(snapshots + file-system backups): configure a VolumeSnapshotLocation or set "
            "default_volumes_to_fs_backup on the Velero target"
        )
    session.engine["volumes_with_data"] = with_data
    return doc


def backup(target: VeleroTarget, session: BackupSession) -> None:
    run_backup(target, session, spec(target))


verify = velero.verify
drill = velero.drill
drill_cleanup = velero.drill_cleanup


def check_restore(
    target: VeleroTarget, manifest: Manifest, store: StoreBlock, options: RestoreOptions
) -> None:
    """Kubernetes' refusals before a checklist, but a mapping may go into a namespace that
    exists (a full restore's kubernetes step made it, with the claims this puts data into)."""
    velero.check_restore(target, manifest, store, options, mapping_aside=False)
    doc = velero.load_document(store, manifest)
    if _through_helpers(doc, options):  # before the checklist's safety backup, as restore refuses
        _refuse_running_writers(target, _existing_claims_rewritten(target, doc, options))


def fs_claims(target: VeleroTarget, doc: dict[str, Any]) -> dict[tuple[str, str], list[str]]:
    """(namespace, claim) -> the backed-up pods whose file-system backup of it a restore brings
    back. Velero restores every volume with a PodVolumeBackup of every pod it restores into
    whatever claim that pod mounts, one that exists too (podvolume/restorer.go checks no
    existence), and the helper pods are all the backup's pods of the restored namespaces."""
    name = doc["backup"]["metadata"]["name"]
    k = connect(target.kube)
    pvbs = pod_volume_backups(k, target, name)
    out: dict[tuple[str, str], list[str]] = {}
    for pvb in pvbs:
        claim = (pvb["metadata"].get("annotations") or {}).get(PVC_NAME)
        pod = (pvb.get("spec") or {}).get("pod") or {}
        if claim and (pvb.get("status") or {}).get("snapshotID"):  # none: nothing to restore
            out.setdefault((pod.get("namespace", ""), claim), []).append(pod.get("name", ""))
    return out


def rewritten_too(target: VeleroTarget, doc: dict[str, Any], restoring: dict[str, list[str]]) -> list[str]:
    """The claims a file-system restore of the namespaces in `restoring` (namespace -> the claims
    meant to get their data back) would rewrite besides those, as 'ns/claim (pods ...)'."""
    return sorted(
        f"{ns}/{claim} (mounted by {', '.join(sorted(pods))})"
        for (ns, claim), pods in fs_claims(target, doc).items()
        if ns in restoring and claim not in restoring[ns]
    )


def wrote(options: velero.RestoreOptions, report: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a restore wrote, from its report (as kubernetes; claims whose data it rewrote are
    among `overwritten`); None when it cannot tell."""
    return _wrote(report)


class RestoreOptions(velero.RestoreOptions):
    resources: list[str] | None = Field(default_factory=lambda: list(VOLUME_RESOURCES))
    restore_pvs: bool | None = Field(default=True, description="restore the volumes' data")


def restore(
    target: VeleroTarget, manifest: Manifest, store: StoreBlock, options: RestoreOptions
) -> dict[str, Any]:
    """File-system-backed volumes get their data back only through restored pods that mount them
    (Velero's restore-wait): their pods come too, as helpers that never run the app and are
    removed once the data is in (kubernetes/claims.py). Snapshots need no pods."""
    doc = velero.load_document(store, manifest)
    if _through_helpers(doc, options):
        wanted = {velero.canonical_resource(r) for r in options.resources or []}
        rewritten = _existing_claims_rewritten(target, doc, options)
        _refuse_running_writers(target, rewritten)
        if options.resources and "pods" not in wanted:
            options = options.model_copy(update={"resources": [*options.resources, "pods"]})
        report = velero.restore_document(
            target, doc, options, manifest.id, helper_pods=True, mapping_aside=False
        )
        if rewritten:
            # Velero skipped these claims as existing, yet wrote their data: never "left as they
            # are", and never a restore that wrote nothing
            report["rewritten_claims"] = rewritten
            report["overwritten"] = [*report["overwritten"], *(f"{c}: its data" for c in rewritten)]
            earlier = report.get("note", "")
            earlier = "" if earlier.startswith(velero.NOTHING_WRITTEN) else earlier
            report["note"] = (
                f"claims {rewritten} already existed: Velero kept the claim objects but wrote the "
                "backup's data into them through the restored pods (file-system backup restores "
                "every backed-up volume of the pods it restores). " + (earlier or "")
            ).strip()
            log.warning(report["note"])
        return report
    return velero.restore_document(target, doc, options, manifest.id, mapping_aside=False)


def _through_helpers(doc: dict[str, Any], options: RestoreOptions) -> bool:
    """The restore brings claims' data back through helper pods: a file-system backup, claims and
    their data asked for."""
    fs = any(p.get("phase") == "Completed" for p in doc["describe"].get("fs_backups") or [])
    wanted = {velero.canonical_resource(r) for r in options.resources or []}
    claims_wanted = not options.resources or "persistentvolumeclaims" in wanted
    return fs and options.restore_pvs is not False and claims_wanted


def _refuse_running_writers(target: VeleroTarget, rewritten: list[str]) -> None:
    """Before anything changes: existing claims the helper pods will write the backup's data into
    ('ns/claim (mounted by ...)') while live pods still use them. Nothing quiesces here: their
    data would be rewritten under a running writer."""
    k = connect(target.kube)
    by_ns: dict[str, list[str]] = {}
    for entry in rewritten:
        ns, claim = entry.split(" ", 1)[0].split("/", 1)
        by_ns.setdefault(ns, []).append(claim)
    users = [
        f"claim {ns}/{claim} by pods {pods}"
        for ns, claims_ in sorted(by_ns.items())
        for claim, pods in users_of(k, ns, claims_).items()
    ]
    if users:
        raise target_untouched(
            BadInput(
                f"this file-system restore would write the backup's data into existing claims that live "
                f"pods use ({'; '.join(users)}): stop those apps first (data_corruption quiesces the "
                "Deployments and restores the claims for you), or delete the claims, then run again. "
                "Nothing was changed"
            )
        )


def _existing_claims_rewritten(
    target: VeleroTarget, doc: dict[str, Any], options: RestoreOptions
) -> list[str]:
    """The claims that exist (in the restore's target namespaces) whose data the restore's helper
    pods will nonetheless rewrite from the backup, as 'ns/claim (mounted by ...)'."""
    k = connect(target.kube)
    mapping = options.namespace_mapping
    namespaces = [
        ns for ns in options.namespaces or sorted(doc["inventory"]) if ns not in options.exclude_namespaces
    ]
    absent = {
        ns: sorted(
            set(doc["inventory"].get(ns, {}).get("persistentvolumeclaims", []))
            - _present(k, mapping.get(ns, ns), "persistentvolumeclaims")
        )
        for ns in namespaces
    }
    pairs = (claim.split("/", 1) for claim in rewritten_too(target, doc, absent))
    return [f"{mapping.get(ns, ns)}/{rest}" for ns, rest in pairs]


def describe_current_state(target: VeleroTarget) -> dict[str, Any]:
    state = velero.describe_current_state(target)
    return {"pvcs": state["pvcs"], "velero": state["velero"]}
