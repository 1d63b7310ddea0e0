"""Authentication by bearer token and RBAC authorization, as the kube-apiserver does them.

Tokens: the admin token of `write_kubeconfig` is in group system:masters (allowed everything, like
a cluster-admin kubeconfig); `service_account_token(ns, name)` issues a token for a ServiceAccount
(valid while that ServiceAccount exists), whose requests are allowed only when a Role/ClusterRole
bound to it (RoleBinding in the request's namespace, or ClusterRoleBinding) has a matching rule.
The RBAC objects are ordinary API objects: apply deployments/k8s/rbac.yaml through the API.

Request attributes follow the apiserver's RequestInfo: verb get/list/create/update/patch/delete,
`resource/subresource`, and for a request on one namespace object its namespace is that name.
A non-resource URL (discovery: /api, /apis/...) is judged by the `nonResourceURLs` rules of
ClusterRoles bound cluster-wide, with the request's lower-case HTTP method as its verb; the
cluster's bootstrap ClusterRole system:discovery grants them to every authenticated user
(seeding.py), as plugin/pkg/auth/authorizer/rbac/bootstrappolicy does.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from sandbox.k8s_emulator.store import BY_PATH, ApiError, ObjectStore, Resource

RBAC = "rbac.authorization.k8s.io/v1"
ADMIN_TOKEN = "emulator-token"  # noqa: S105 (the emulator's, in the kubeconfig it writes)


@dataclass(frozen=True)
class Identity:
    user: str
    groups: tuple[str, ...]
    service_account: tuple[str, str] | None = None  # (namespace, name)

    @property
    def superuser(self) -> bool:
        return "system:masters" in self.groups


ADMIN = Identity("kubernetes-admin", ("system:masters", "system:authenticated"))


def _matches(rule: dict[str, Any], verb: str, group: str, resource: str, name: str | None) -> bool:
    def has(values: list[str] | None, value: str) -> bool:
        return bool(values) and ("*" in values or value in values)

    if not (has(rule.get("verbs"), verb) and has(rule.get("apiGroups"), group)):
        return False
    if not has(rule.get("resources"), resource):
        return False
    names = rule.get("resourceNames")
    return not names or (name is not None and name in names)


class Authorizer:
    def __init__(self, store: ObjectStore):
        self.store = store
        self.tokens: dict[str, Identity] = {ADMIN_TOKEN: ADMIN}
        # audit of non-admin requests: which rule granted each (role kind, namespace, name, rule index)
        self.granted: list[tuple[tuple[str, str, str, int], str, str, str]] = []
        self.refused: list[str] = []

    def service_account_token(self, namespace: str, name: str) -> str:
        """A bearer token for ServiceAccount `namespace/name` (what a pod's projected token is)."""
        token = f"sa.{namespace}.{name}.{secrets.token_hex(8)}"
        self.tokens[token] = Identity(
            f"system:serviceaccount:{namespace}:{name}",
            ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"),
            (namespace, name),
        )
        return token

    def authenticate(self, header: str | None) -> Identity:
        token = (header or "").removeprefix("Bearer ").strip()
        who = self.tokens.get(token)
        if who is not None and who.service_account is not None:
            ns, name = who.service_account
            if self.store.find(BY_PATH[("v1", "serviceaccounts")], ns, name) is None:
                who = None  # the account was deleted: its tokens no longer authenticate
        if who is None:
            raise ApiError(401, "Unauthorized", "Unauthorized")
        return who

    def _subject_is(self, subject: dict[str, Any], who: Identity) -> bool:
        kind, name = subject.get("kind"), subject.get("name")
        if kind == "ServiceAccount":
            return who.service_account == (subject.get("namespace"), name)
        if kind == "User":
            return who.user == name
        return kind == "Group" and name in who.groups

    def _rules(self, who: Identity, namespace: str | None) -> list[tuple[tuple, dict[str, Any]]]:
        roles = BY_PATH[(RBAC, "roles")]
        cluster_roles = BY_PATH[(RBAC, "clusterroles")]
        bindings = [(b, None) for b in self.store.list(BY_PATH[(RBAC, "clusterrolebindings")])]
        if namespace:
            bindings += [(b, namespace) for b in self.store.list(BY_PATH[(RBAC, "rolebindings")], namespace)]
        rules: list[tuple[tuple, dict[str, Any]]] = []
        for binding, ns in bindings:
            if not any(self._subject_is(s, who) for s in binding.get("subjects") or []):
                continue
            ref = binding.get("roleRef") or {}
            if ref.get("kind") == "ClusterRole":
                role = self.store.find(cluster_roles, "", ref.get("name", ""))
            elif ref.get("kind") == "Role" and ns:
                role = self.store.find(roles, ns, ref.get("name", ""))
            else:
                role = None
            where = ns if ref.get("kind") == "Role" else ""
            for index, rule in enumerate((role or {}).get("rules") or []):
                rules.append(((ref.get("kind"), where, ref.get("name"), index), rule))
        return rules

    def authorize_url(self, who: Identity, verb: str, path: str) -> None:
        """Raise the apiserver's 403 unless a ClusterRole bound cluster-wide grants `verb` on the
        non-resource URL `path` ('/apis/*' covers every path under /apis/)."""
        if who.superuser:
            return
        for key, rule in self._rules(who, None):
            verbs, urls = rule.get("verbs") or [], rule.get("nonResourceURLs") or []
            if (verb in verbs or "*" in verbs) and any(
                u == path or (u.endswith("*") and path.startswith(u[:-1])) for u in urls
            ):
                self.granted.append((key, verb, f"nonResourceURL {path}", ""))
                return
        message = f'forbidden: User "{who.user}" cannot {verb} path "{path}"'
        self.refused.append(message)
        raise ApiError(403, "Forbidden", message)

    def authorize(
        self, who: Identity, verb: str, res: Resource, sub: str | None, ns: str | None, name: str | None
    ) -> None:
        """Raise the apiserver's 403 unless RBAC allows `verb` on the resource for `who`."""
        if who.superuser:
            return
        namespace = name if res.plural == "namespaces" and name else ns
        resource = f"{res.plural}/{sub}" if sub else res.plural
        for key, rule in self._rules(who, namespace):
            if _matches(rule, verb, res.group, resource, name):
                self.granted.append((key, verb, f"{res.group}/{resource}", namespace or ""))
                return
        where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
        subject = f'{res.group_resource} "{name}"' if name else res.group_resource
        message = (
            f'{subject} is forbidden: User "{who.user}" cannot {verb} resource "{resource}" '
            f'in API group "{res.group}"{where}'
        )
        self.refused.append(message)
        raise ApiError(
            403,
            "Forbidden",
            message,
            {"name": name or "", "group": res.group, "kind": res.plural},
        )
