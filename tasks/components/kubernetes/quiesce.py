"""Quiescing a namespace's apps around a restore.

Quiesce records each deployment's replica count in an annotation before scaling it to 0, so a
second quiesce after a crash still knows the real counts, and unquiesce puts back exactly those.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from kubernetes import client

from blocks.kubernetes import KubernetesTarget
from tasks.components.kubernetes.api import Kube, connect, list_deployments, wait_for
from tasks.errors import BackupError, ConfigurationError

log = logging.getLogger(__name__)
QUIESCED_ANNOTATION = "klb.io/quiesced-replicas"


def get_replicas(k: Kube, namespace: str, name: str) -> int:
    scale = k.call(
        f"read scale of deployment {namespace}/{name}",
        k.apps.read_namespaced_deployment_scale,
        name,
        namespace,
    )
    return int(scale.spec.replicas or 0)


def scale(k: Kube, namespace: str, name: str, replicas: int) -> None:
    """Through the scale subresource: the flows' RBAC grants patch on deployments/scale."""
    k.call(
        f"scale deployment {namespace}/{name} to {replicas}",
        k.apps.patch_namespaced_deployment_scale,
        name,
        namespace,
        {"spec": {"replicas": int(replicas)}},
    )


def label_selector(dep: client.V1Deployment) -> str:
    """A deployment's spec.selector as a label-selector query (matchLabels and matchExpressions)."""
    sel = dep.spec.selector
    terms = [f"{key}={value}" for key, value in sorted((sel.match_labels or {}).items())]
    for expr in sel.match_expressions or []:
        values = ",".join(expr.values or [])
        terms.append(
            {
                "In": f"{expr.key} in ({values})",
                "NotIn": f"{expr.key} notin ({values})",
                "Exists": expr.key,
                "DoesNotExist": f"!{expr.key}",
            }[expr.operator]
        )
    return ",".join(terms)


def _pods(k: Kube, namespace: str, selector: str) -> list[str]:
    """Names of the pods `selector` matches that scaling its Deployment stops, terminating ones
    included (not one another controller holds: unstopped_users)."""
    items = k.call(
        f"list pods in {namespace}", k.core.list_namespaced_pod, namespace, label_selector=selector
    )
    return [p.metadata.name for p in items.items if _controller_kind(p) in (None, "ReplicaSet")]


def unstopped_users(k: Kube, namespace: str, claims: list[str]) -> dict[str, list[str]]:
    """claim -> the pods of `namespace` mounting it that `quiesce` leaves running: bare pods and
    those of a controller it does not scale (StatefulSet, DaemonSet, Job...). Quiesce scales the
    namespace's Deployments only, and a ReplicaSet adopts an orphan its selector matches; pods that
    are done (Succeeded, Failed) or already being deleted hold no claim for long. A claim deleted
    under such a pod stays Terminating (pvc-protection) until it goes, and restored under it, it
    is written while the pod writes too."""
    stopped = {p for dep in list_deployments(k, namespace) for p in _pods(k, namespace, label_selector(dep))}
    return users_of(k, namespace, claims, stopped)


def users_of(k: Kube, namespace: str, claims: list[str], but: set[str] = frozenset()) -> dict[str, list[str]]:
    """claim -> the live pods of `namespace` (not done, not being deleted) mounting it, but `but`."""
    wanted = set(claims)
    users: dict[str, list[str]] = {}
    for pod in k.call(f"list pods in {namespace}", k.core.list_namespaced_pod, namespace).items:
        done = (pod.status.phase if pod.status else None) in ("Succeeded", "Failed")
        if pod.metadata.name in but or pod.metadata.deletion_timestamp or done:
            continue
        for volume in (pod.spec.volumes if pod.spec else None) or []:
            source = volume.persistent_volume_claim
            if source is not None and source.claim_name in wanted:
                users.setdefault(source.claim_name, []).append(pod.metadata.name)
    return {claim: sorted(set(pods)) for claim, pods in sorted(users.items())}


def _controller_kind(pod: client.V1Pod) -> str | None:
    owners = pod.metadata.owner_references or []
    return next((o.kind for o in owners if o.controller), owners[0].kind if owners else None)


def _annotate(k: Kube, namespace: str, name: str, value: str | None) -> None:
    k.call(
        f"annotate deployment {namespace}/{name}",
        k.apps.patch_namespaced_deployment,
        name,
        namespace,
        {"metadata": {"annotations": {QUIESCED_ANNOTATION: value}}},
    )


def check_may_quiesce(k: Kube, namespace: str) -> None:
    """Every write quiesce and unquiesce make, asked of the API server as dry runs (RBAC,
    admission), before a flow changes anything: a refusal found mid-way bounced the apps for
    nothing."""
    for dep in list_deployments(k, namespace):
        name, replicas = dep.metadata.name, get_replicas(k, namespace, dep.metadata.name)
        k.call(
            f"scale deployment {namespace}/{name}",
            k.apps.patch_namespaced_deployment_scale,
            name,
            namespace,
            {"spec": {"replicas": replicas}},
            dry_run="All",
        )
        note = {"metadata": {"annotations": {QUIESCED_ANNOTATION: str(replicas)}}}
        fn = k.apps.patch_namespaced_deployment
        k.call(f"annotate deployment {namespace}/{name}", fn, name, namespace, note, dry_run="All")


def quiesce(kube: KubernetesTarget | None, namespace: str, timeout: float = 300) -> dict[str, int]:
    """Scale every deployment of `namespace` to 0; return the replica counts they had.

    A deployment already quiesced by an earlier (interrupted) run keeps its recorded count. If
    any scale-down fails, the ones already scaled are put back before raising."""
    k = connect(kube)
    recorded: dict[str, int] = {}
    try:
        for dep in list_deployments(k, namespace):
            name = dep.metadata.name
            earlier = (dep.metadata.annotations or {}).get(QUIESCED_ANNOTATION)
            replicas = get_replicas(k, namespace, name)
            if earlier is not None and replicas == 0:
                replicas = int(earlier)
            else:
                _annotate(k, namespace, name, str(replicas))
            recorded[name] = replicas
            scale(k, namespace, name, 0)
        # status.replicas counts only pods not yet terminating (apps/v1 DeploymentStatus): it is
        # 0 while they still run out their grace period, writing. Quiesced means the pods are gone.
        selectors = [label_selector(d) for d in list_deployments(k, namespace) if d.metadata.name in recorded]
        wait_for(
            lambda: (
                all((d.status.replicas or 0) == 0 for d in list_deployments(k, namespace))
                and not any(_pods(k, namespace, s) for s in selectors)
            ),
            timeout,
            1,
            f"the pods of {namespace} to stop (terminating pods included)",
        )
    except BaseException:
        if recorded:
            log.error("quiesce of %s failed: putting back %s", namespace, recorded)
            try:
                unquiesce(kube, namespace, recorded)
            except Exception as exc:
                log.error("could not put back %s in %s: %s", recorded, namespace, exc)
        raise
    log.info("quiesced %s: %s", namespace, recorded)
    return recorded


def unquiesce(kube: KubernetesTarget | None, namespace: str, replicas: dict[str, int]) -> None:
    """Put back exactly the recorded counts; try every deployment, then report all failures."""
    k = connect(kube)
    failed: dict[str, str] = {}
    for name, count in replicas.items():
        try:
            scale(k, namespace, name, count)
            _annotate(k, namespace, name, None)
        except BackupError as exc:
            failed[name] = str(exc)
    if failed:
        raise ConfigurationError(
            f"could not put back the replica counts in {namespace}: {failed}. Scale them by hand: "
            + "; ".join(
                f"kubectl -n {namespace} scale deployment/{n} --replicas={replicas[n]}" for n in failed
            )
        )
    log.info("unquiesced %s: %s", namespace, replicas)


@contextmanager
def quiesced(kube: KubernetesTarget | None, namespace: str) -> Iterator[dict[str, int]]:
    """`with quiesced(kube, ns) as counts:` apps are down inside, back to exactly `counts` after."""
    counts = quiesce(kube, namespace)
    try:
        yield counts
    finally:
        unquiesce(kube, namespace, counts)
