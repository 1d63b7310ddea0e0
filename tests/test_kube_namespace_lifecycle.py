"""A deleted namespace terminates for a while on the emulated API server, as on a real one
(sandbox/k8s_emulator/store.py; pkg/registry/core/namespace, the namespace controller and the
NamespaceLifecycle admission plugin). An emulator that removed namespaces at once let code that
deletes then re-creates a namespace pass here and fail on a cluster."""

from __future__ import annotations

import secrets

import pytest
from kubernetes.client.exceptions import ApiException

from tests.k8s_helpers import k8s


def refusal(call) -> ApiException:
    with pytest.raises(ApiException) as info:
        call()
    return info.value


def test_a_deleted_namespace_terminates_refusing_new_content_and_goes_with_its_own(kube_api, ctl):
    """Delete sets deletionTimestamp and phase Terminating (the `kubernetes` finalizer); new
    content is refused (NamespaceLifecycle: 403 "because it is being terminated"); creating it
    again is a 409 AlreadyExists until it is gone; the namespace controller removes what it
    holds, then the namespace, by itself; after that it can be made anew, empty."""
    ns = "life-" + secrets.token_hex(3)
    ctl.seed_namespace(ns)
    core = k8s(kube_api).core
    core.create_namespaced_config_map(ns, {"metadata": {"name": "kept"}, "data": {"a": "1"}})
    core.delete_namespace(ns)
    read = core.read_namespace(ns)
    assert read.status.phase == "Terminating" and read.metadata.deletion_timestamp
    assert read.spec.finalizers == ["kubernetes"]
    exc = refusal(lambda: core.create_namespaced_config_map(ns, {"metadata": {"name": "new"}}))
    assert exc.status == 403 and "because it is being terminated" in exc.body
    exc = refusal(lambda: core.create_namespace({"metadata": {"name": ns}}))
    assert exc.status == 409 and "AlreadyExists" in exc.body
    ctl.settle(lambda: not any(n.metadata.name == ns for n in core.list_namespace().items))
    assert refusal(lambda: core.read_namespaced_config_map("kept", ns)).status == 404
    core.create_namespace({"metadata": {"name": ns}})
    assert core.read_namespace(ns).status.phase == "Active"
    assert [
        c.metadata.name for c in core.list_namespaced_config_map(ns).items if c.metadata.name == "kept"
    ] == []


def test_a_namespace_stays_terminating_while_an_object_in_it_keeps_its_finalizer(kube_api, ctl):
    """The namespace controller deletes each object as a client would: one with a finalizer is
    only marked (deletionTimestamp), and the namespace goes only when nothing is left in it
    (pkg/controller/namespace/deletion: NamespaceFinalizersRemaining). The emulator removed the
    namespace with everything in it, finalizers or not."""
    ns = "held-" + secrets.token_hex(3)
    ctl.seed_namespace(ns)
    core = k8s(kube_api).core
    core.create_namespaced_config_map(ns, {"metadata": {"name": "held", "finalizers": ["example.com/hold"]}})
    core.create_namespaced_config_map(ns, {"metadata": {"name": "free"}})
    core.delete_namespace(ns)
    ctl.settle(lambda: core.read_namespaced_config_map("held", ns).metadata.deletion_timestamp is not None)
    ctl.settle(lambda: "free" not in [c.metadata.name for c in core.list_namespaced_config_map(ns).items])
    assert core.read_namespace(ns).status.phase == "Terminating"
    core.patch_namespaced_config_map("held", ns, {"metadata": {"finalizers": None}})
    ctl.settle(lambda: ns not in [n.metadata.name for n in core.list_namespace().items])
