"""A Service whose nodePorts `kubectl apply` fixed comes back on them wherever no other Service
holds them now, on every restore path; a copy that would collide gives up just those ports.

Velero keeps such ports (service_action.go: those the last-applied-configuration names) and
drops the ones the cluster assigned. A restore by name took every nodePort off its copies (a
deleted Service came back on a new port: whoever reached it from outside lost it), and a
mapped restore beside the originals asked for the ports they hold (422, PartiallyFailed)."""

from __future__ import annotations

import json

from sandbox.k8s_emulator.snapshot import NAMESPACES, SERVICES
from tasks.components import kubernetes as velero
from tasks.components.kubernetes import api as kube
from tests.k8s_helpers import k8s, seed_namespaces, seed_settings
from tests.test_velero_roundtrip import applied, delete_namespace, take_backup

FIXED = {"type": "NodePort", "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}
# three ports, only the last one fixed: the fixed one is at index 2
MULTI = {
    "type": "NodePort",
    "ports": [
        {"name": "a", "port": 81},
        {"name": "b", "port": 82},
        {"name": "c", "port": 83, "nodePort": 30083},
    ],
}
# fixed by server-side apply: no last-applied-configuration, its field manager owns the nodePort
SSA_FIELDS = {"f:spec": {"f:ports": {'k:{"port":84,"protocol":"TCP"}': {".": {}, "f:nodePort": {}}}}}
SSA = {
    "name": "ssa",
    "managedFields": [
        {"manager": "kubectl", "operation": "Apply", "apiVersion": "v1", "fieldsType": "FieldsV1"}
    ],
}
SSA["managedFields"][0]["fieldsV1"] = SSA_FIELDS
SSA_SPEC = {"type": "NodePort", "ports": [{"name": "p", "port": 84, "protocol": "TCP", "nodePort": 30084}]}
FIXED_PORTS = {"fixed": {"http": 30080}, "multi": {"c": 30083}, "ssa": {"p": 30084}}


def seed_ports(ctl, ns: str) -> None:
    seed_settings(ctl, ns)
    ctl.seed("v1", "services", ns, applied({"metadata": {"name": "fixed"}, "spec": FIXED}))
    ctl.seed("v1", "services", ns, applied({"metadata": {"name": "multi"}, "spec": MULTI}))
    ctl.seed("v1", "services", ns, {"metadata": SSA, "spec": SSA_SPEC})


def view(ctl, ns: str, name: str) -> dict:
    """The Service as a restore must give it back: all but its cluster IPs, the nodePorts the
    cluster assigned (Velero drops them) and the restore's labels."""
    obj = json.loads(json.dumps(ctl.store.get(SERVICES, ns, name)))
    spec = obj["spec"]
    spec.pop("clusterIP"), spec.pop("clusterIPs")
    for port in spec["ports"]:
        if port["name"] not in FIXED_PORTS[name]:
            port.pop("nodePort")
    labels = {
        k: v for k, v in (obj["metadata"].get("labels") or {}).items() if not k.startswith("velero.io/")
    }
    return {"spec": spec, "labels": labels, "annotations": obj["metadata"].get("annotations")}


def ports(ctl, ns: str, name: str) -> dict[str, int]:
    return {p["name"]: p["nodePort"] for p in ctl.store.get(SERVICES, ns, name)["spec"]["ports"]}


def take(ctl, name: str, port: int) -> None:
    """Another Service, elsewhere, that holds `port` now."""
    spec = {"type": "NodePort", "ports": [{"name": "x", "port": 80, "nodePort": port}]}
    if ctl.store.find(NAMESPACES, "", "elsewhere") is None:
        ctl.seed_namespace("elsewhere")
    ctl.seed("v1", "services", "elsewhere", {"metadata": {"name": name}, "spec": spec})


def test_deleted_services_restored_by_name_come_back_on_their_fixed_node_ports(kube_api, ctl, local_store):
    store = local_store()
    (ns,) = seed_namespaces(ctl, "byname", seed=seed_ports)
    before = {name: view(ctl, ns, name) for name in FIXED_PORTS}
    target, manifest = take_backup(kube_api, store, ns)
    for name in FIXED_PORTS:
        ctl.store.delete(SERVICES, ns, name)

    options = velero.RestoreOptions(namespaces=[ns], resources=["services"], names=sorted(FIXED_PORTS))
    report = velero.restore(target, manifest, store, options)

    assert report["restored_objects"] == [f"{ns}/services/{name}" for name in sorted(FIXED_PORTS)]
    assert {name: view(ctl, ns, name) for name in FIXED_PORTS} == before
    assert not [n for n in kube.list_namespaces(k8s(kube_api)) if n.startswith("klb-aside-")]


def test_a_service_restored_by_name_whose_port_was_taken_meanwhile_gets_a_new_one(kube_api, ctl, local_store):
    store = local_store()
    (ns,) = seed_namespaces(ctl, "taken", seed=seed_ports)
    target, manifest = take_backup(kube_api, store, ns)
    ctl.store.delete(SERVICES, ns, "multi")
    take(ctl, "thief", 30083)

    options = velero.RestoreOptions(namespaces=[ns], resources=["services"], names=["multi"])
    report = velero.restore(target, manifest, store, options)

    assert report["restored_objects"] == [f"{ns}/services/multi"]
    assert ports(ctl, ns, "multi")["c"] not in (30083, None)
    assert ports(ctl, "elsewhere", "thief") == {"x": 30083} and ports(ctl, ns, "fixed") == {"http": 30080}


def test_a_namespace_restored_in_place_keeps_the_free_ports_and_gives_up_a_taken_one(
    kube_api, ctl, local_store
):
    """Index 2 of a three-port Service, its port now held by a one-port Service elsewhere."""
    store = local_store()
    (ns,) = seed_namespaces(ctl, "inplace", seed=seed_ports)
    before = view(ctl, ns, "fixed")
    target, manifest = take_backup(kube_api, store, ns)
    delete_namespace(ctl, ns)
    take(ctl, "thief", 30083)

    report = velero.restore(target, manifest, store, velero.RestoreOptions())

    assert report["phase"] == "Completed"
    assert view(ctl, ns, "fixed") == before
    assert ports(ctl, ns, "multi")["c"] not in (30083, None)


def test_a_namespace_restored_whole_in_place_comes_back_on_its_fixed_ports(kube_api, ctl, local_store):
    store = local_store()
    (ns,) = seed_namespaces(ctl, "whole", seed=seed_ports)
    before = {name: view(ctl, ns, name) for name in FIXED_PORTS}
    target, manifest = take_backup(kube_api, store, ns)
    delete_namespace(ctl, ns)

    report = velero.restore(target, manifest, store, velero.RestoreOptions())

    assert report["phase"] == "Completed"
    assert {name: view(ctl, ns, name) for name in FIXED_PORTS} == before


def test_an_update_in_place_keeps_the_ports_its_services_hold(kube_api, ctl, local_store):
    store = local_store()
    (ns,) = seed_namespaces(ctl, "update", seed=seed_ports)
    before = {name: view(ctl, ns, name) for name in FIXED_PORTS}
    target, manifest = take_backup(kube_api, store, ns)
    ctl.store.patch(SERVICES, ns, "fixed", {"metadata": {"labels": {"drift": "yes"}}})

    options = velero.RestoreOptions(resources=["services"], existing_resource_policy="update")
    report = velero.restore(target, manifest, store, options)

    assert report["phase"] == "Completed"
    assert {name: view(ctl, ns, name) for name in FIXED_PORTS} == before


def test_a_mapped_copy_beside_its_original_gets_new_ports_and_one_without_it_keeps_them(
    kube_api, ctl, local_store
):
    store = local_store()
    (ns,) = seed_namespaces(ctl, "mapped", seed=seed_ports)
    before = {name: view(ctl, ns, name) for name in FIXED_PORTS}
    target, manifest = take_backup(kube_api, store, ns)

    beside = velero.restore(target, manifest, store, velero.RestoreOptions(namespace_mapping={ns: f"b-{ns}"}))

    assert beside["phase"] == "Completed"
    assert {name: view(ctl, ns, name) for name in FIXED_PORTS} == before  # the originals untouched
    assert ports(ctl, f"b-{ns}", "fixed")["http"] not in (30080, None)
    assert ports(ctl, f"b-{ns}", "multi")["c"] not in (30083, None)
    assert ports(ctl, f"b-{ns}", "ssa")["p"] not in (30084, None)
    delete_namespace(ctl, ns)

    alone = velero.restore(target, manifest, store, velero.RestoreOptions(namespace_mapping={ns: f"c-{ns}"}))

    assert alone["phase"] == "Completed"
    assert {name: view(ctl, f"c-{ns}", name) for name in FIXED_PORTS} == before


def test_drills_keep_the_free_fixed_ports_and_give_up_the_held_ones(kube_api, ctl, local_store):
    """Beside the originals the drill's copies take new ports; with the originals gone (a backup of
    a namespace that no longer exists), the ports the cluster does not hold."""
    store = local_store()
    (ns,) = seed_namespaces(ctl, "drill", seed=seed_ports)
    target, manifest = take_backup(kube_api, store, ns)
    created: list[tuple[str, str, dict]] = []

    def watch(res, ns_, obj):
        if res is SERVICES and ns_.startswith("restore-drill-"):
            created.append(
                (ns_, obj["metadata"]["name"], {p["name"]: p["nodePort"] for p in obj["spec"]["ports"]})
            )

    ctl.store.on_create.append(watch)
    try:
        assert velero.drill(target, manifest, store, "beside")["verified"] is True
        fixed = {name: p[port] for _, name, p in created for port in FIXED_PORTS[name]}
        assert sorted(fixed) == sorted(FIXED_PORTS)
        assert not set(fixed.values()) & {30080, 30083, 30084}  # all held by the originals
        created.clear()
        delete_namespace(ctl, ns)
        assert velero.drill(target, manifest, store, "alone")["verified"] is True
        fixed = {name: p[port] for _, name, p in created for port in FIXED_PORTS[name]}
        assert fixed == {"fixed": 30080, "multi": 30083, "ssa": 30084}
    finally:
        ctl.store.on_create.remove(watch)
