"""The emulated Velero applies resource modifiers as internal/resourcemodifiers does: conditions
on the item in its source namespace, groupResource as a glob over 'plural.group', `matches` as
JSON-patch tests, and a patch that cannot apply (RFC 6902: a missing path) as an item error."""

from __future__ import annotations

import secrets

import yaml

from sandbox.k8s_emulator.snapshot import CONFIGMAPS
from sandbox.k8s_emulator.store import BY_PATH
from tests.test_velero_emulator import app, backup, restore  # noqa: F401 (app is a fixture)

DEPLOYMENTS, SECRETS = BY_PATH[("apps/v1", "deployments")], BY_PATH[("v1", "secrets")]


def modifier(ctl, rules: list[dict]) -> dict:
    name = f"mod-{secrets.token_hex(3)}"
    doc = {"version": "v1", "resourceModifierRules": rules}
    ctl.seed(
        "v1", "configmaps", "velero", {"metadata": {"name": name}, "data": {"r.yaml": yaml.safe_dump(doc)}}
    )
    return {"kind": "ConfigMap", "name": name}


def test_resource_modifiers_as_velero_applies_them(kube_api, app):  # noqa: F811
    """The emulator matched `namespaces` against the mapped namespace (Velero: the item's own,
    before it is moved), took 'deployments' for deployments.apps, ignored `matches`, and let a
    JSON patch remove a path that is not there (Velero: 'error in applying patch', an error)."""
    ctl = kube_api.controller
    name, _ = backup(kube_api, app)
    rules = [
        {
            "conditions": {
                "groupResource": "configmaps",
                "namespaces": [app],
                "resourceNameRegex": "^settings$",
            },
            "patches": [{"operation": "replace", "path": "/data/mode", "value": "drill"}],
        },
        {
            "conditions": {"groupResource": "deployments"},
            "patches": [{"operation": "replace", "path": "/spec/replicas", "value": "0"}],
        },
        {
            "conditions": {
                "groupResource": "configmaps",
                "matches": [{"path": "/data/beta", "value": "off"}],
            },
            "patches": [{"operation": "replace", "path": "/data/beta", "value": "on"}],
        },
        {
            "conditions": {"groupResource": "secrets"},
            "patches": [{"operation": "remove", "path": "/data/absent"}],
        },
    ]
    copy = f"m-{app}"
    _, done = restore(kube_api, name, namespaceMapping={app: copy}, resourceModifier=modifier(ctl, rules))

    assert ctl.store.get(CONFIGMAPS, copy, "settings")["data"] == {"mode": "drill"}
    assert ctl.store.get(CONFIGMAPS, copy, "flags")["data"] == {"beta": "on"}
    assert ctl.store.get(DEPLOYMENTS, copy, "worker")["spec"]["replicas"] == 5
    assert ctl.store.get(SECRETS, copy, "db-password")["data"] == {"pw": "czNjcjN0"}  # restored as it was
    assert done["status"]["phase"] == "PartiallyFailed" and done["status"]["errors"] == 1
