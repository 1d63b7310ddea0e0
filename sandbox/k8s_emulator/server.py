"""An HTTP server speaking the Kubernetes REST API for the calls the project makes.

Namespaces, apps/v1 deployments (+ /scale), core/v1 PVCs, configmaps, secrets, services, pods,
serviceaccounts, RBAC roles and bindings, velero.io/v1 custom objects (+ /status),
CustomResourceDefinitions and the custom resources they serve (crds.py):
list/get/create/replace/patch/delete, label selectors, 201/404/409/403/422 with Kubernetes
Status bodies. The official `kubernetes` client talks to it over real HTTP.
Every request is authenticated by its bearer token and authorized by RBAC (rbac.py).
API discovery (/api, /apis, ...) is served as the real server serves it (discovery.py).
"""

from __future__ import annotations

import copy
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from sandbox.k8s_emulator import crds, discovery, fields
from sandbox.k8s_emulator.paging import page
from sandbox.k8s_emulator.rbac import ADMIN, Authorizer, Identity
from sandbox.k8s_emulator.store import BY_PATH, CRDS, ApiError, ObjectStore, Resource
from sandbox.k8s_emulator.velero import VeleroController

VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


NOT_FOUND = "the server could not find the requested resource"


def parse_path(
    path: str, custom: dict[tuple[str, str], Resource] | None = None
) -> tuple[Resource, bool, str | None, str | None, str | None]:
    """-> (resource, served, namespace or None (all), name or None (collection), subresource).

    Like the apiserver's RequestInfo, any well-formed path yields its attributes, so RBAC judges
    the request before anyone learns whether the resource exists: `served` False is a 404 only
    for a caller allowed to ask (the authorization filter runs before the API's handlers).
    `custom`: the custom resources the established CRDs serve (crds.by_path)."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        gv, rest = "v1", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        gv, rest = f"{parts[1]}/{parts[2]}", parts[3:]
    else:
        raise ApiError(404, "NotFound", NOT_FOUND)
    ns = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        ns, rest = rest[1], rest[2:]
    if not rest:
        raise ApiError(404, "NotFound", NOT_FOUND)
    known = {**(custom or {}), **BY_PATH}  # a built-in resource wins over a CRD's
    res = known.get((gv, rest[0])) or Resource(gv, rest[0], "", namespaced=ns is not None)
    served = (gv, rest[0]) in known
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    # a namespaced object needs its namespace in the path; a cluster-scoped one has none
    if (res.namespaced and name is not None and ns is None) or (not res.namespaced and ns is not None):
        served = False
    return res, served, ns, name, sub


def scale_of(dep: dict[str, Any]) -> dict[str, Any]:
    meta = dep["metadata"]
    labels = ((dep.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    return {
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
        },
        "spec": {"replicas": dep["spec"].get("replicas", 1)},
        "status": {
            "replicas": (dep.get("status") or {}).get("replicas", 0),
            "selector": ",".join(f"{k}={v}" for k, v in labels.items()),
        },
    }


def unconditional_update(res: Resource, current: dict[str, Any], body: Any) -> None:
    """422 for an update (PUT) without metadata.resourceVersion of a kind whose strategy says
    AllowUnconditionalUpdate() false: custom resources (Velero's included) and CRDs
    (apiextensions-apiserver customresource/strategy.go, customresourcedefinition/strategy.go;
    generic registry store.go Update: "must be specified for an update"). Built-in kinds such as
    ConfigMaps, Secrets, Deployments take one (last write wins). A patch never needs one."""
    if not (res.custom or res.group == "velero.io" or res == CRDS):
        return
    meta = body.get("metadata") if isinstance(body, dict) else None
    if isinstance(meta, dict) and meta.get("resourceVersion"):
        return
    name = current["metadata"]["name"]
    raise ApiError(
        422,
        "Invalid",
        f'{current.get("kind", res.kind)}.{res.group} "{name}" is invalid: metadata.resourceVersion: '
        "Invalid value: 0x0: must be specified for an update",
        {
            "name": name,
            "group": res.group,
            "kind": res.kind,
            "causes": [
                {
                    "reason": "FieldValueInvalid",
                    "message": "Invalid value: 0x0: must be specified for an update",
                    "field": "metadata.resourceVersion",
                }
            ],
        },
    )


class KubeApiServer:
    def __init__(self, port: int = 0, velero_namespace: str = "velero", tick: float = 0.01):
        self.store = ObjectStore()
        self.controller = VeleroController(self.store, velero_namespace, tick)
        self.auth = Authorizer(self.store)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # one segment per response: no Nagle / delayed-ACK stall between headers and body
            disable_nagle_algorithm = True
            wbufsize = 1 << 16

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _handle(self) -> None:
                try:
                    accept = self.headers.get("Accept") or ""
                    who = server.auth.authenticate(self.headers.get("Authorization"))
                    ctype = self.headers.get("Content-Type") or ""
                    code, body = server.dispatch(self.command, self.path, self._body(), accept, ctype, who)
                except ApiError as exc:
                    code, body = exc.code, exc.status()
                except Exception as exc:
                    code, body = 500, ApiError(500, "InternalError", f"emulator: {exc!r}").status()
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> Any:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    return json.loads(raw) if raw else None
                except json.JSONDecodeError:
                    raise ApiError(400, "BadRequest", "request body is not JSON") from None

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="kube-api", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> KubeApiServer:
        self._thread.start()
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- routing -------------------------------------------------------------------------------
    def dispatch(
        self,
        method: str,
        raw_path: str,
        body: Any,
        accept: str = "",
        content_type: str = "",
        who: Identity = ADMIN,
        record: bool = True,
    ) -> tuple[int, Any]:
        """`record`: a write goes into the controller's `writes` (not a dry run's)."""
        url = urlsplit(raw_path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        ctl = self.controller
        if discovery.is_discovery(url.path):  # a non-resource URL: RBAC's nonResourceURLs rules
            self.auth.authorize_url(who, method.lower(), url.path)
            if method != "GET":
                raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on {url.path}")
            doc = discovery.serve(url.path, ctl.installed, crds.served(self.store))
            if doc is None:
                raise ApiError(404, "NotFound", NOT_FOUND)
            return 200, doc
        res, served, ns, name, sub = parse_path(url.path, crds.by_path(self.store))
        verb = VERBS.get(method) or ("get" if name else "list")
        self.auth.authorize(who, verb, res, sub, ns, name)  # 403 before 404, as the apiserver
        if not served or (res.group == "velero.io" and not ctl.installed):
            raise ApiError(404, "NotFound", NOT_FOUND)
        validation = query.get("fieldValidation", "Warn")  # the server's default since 1.27
        if validation not in ("Ignore", "Warn", "Strict"):
            raise ApiError(400, "BadRequest", f"fieldValidation {validation!r}: not Ignore, Warn or Strict")
        strict = validation == "Strict"
        rbac_name = f"{res.plural}/{sub}" if sub else res.plural
        if (verb, rbac_name) in ctl.denied:
            where = f' in the namespace "{ns}"' if ns else " at the cluster scope"
            raise ApiError(
                403,
                "Forbidden",
                f'{res.group_resource} "{name or ""}" is forbidden: User '
                f'"system:serviceaccount:klb:klb-flows" cannot {verb} resource "{rbac_name}" '
                f'in API group "{res.group}"{where}',
                {"name": name or "", "group": res.group, "kind": res.plural},
            )
        dry = query.get("dryRun")
        if dry not in (None, "All") or (dry and method not in ("POST", "PUT", "PATCH", "DELETE")):
            raise ApiError(400, "BadRequest", f"dryRun {dry!r}: only All, on create, update, patch or delete")
        if dry and method == "DELETE":  # authorized above; the object as it is, nothing deleted
            if name is None:
                raise ApiError(405, "MethodNotAllowed", "deletecollection is not emulated")
            return 200, copy.deepcopy(self.store.get(res, ns or "", name))
        if dry:  # validated, admitted, defaulted and allocated as the write would be; nothing kept
            rest = urlencode({k: v for k, v in query.items() if k != "dryRun"})
            again = f"{url.path}?{rest}"
            return self.store.dry_run(
                lambda: self.dispatch(method, again, body, accept, content_type, who, record=False)
            )
        if method != "GET" and record:
            ctl.writes.append((method, url.path))
        ns_key = ns or ""
        store = self.store
        if sub == "scale":
            if res.builtin != "deployments":
                raise ApiError(404, "NotFound", NOT_FOUND)
            if method == "GET":
                return 200, scale_of(store.get(res, ns_key, name))
            replicas = ((body or {}).get("spec") or {}).get("replicas") if isinstance(body, dict) else None
            if isinstance(body, list):  # json-patch on the scale
                for op in body:
                    if op.get("path") == "/spec/replicas":
                        replicas = op["value"]
            if replicas is None:
                return 200, scale_of(store.get(res, ns_key, name))
            dep = store.patch(
                res, ns_key, name, {"spec": {"replicas": int(replicas)}}
            )  # scale: any patch type
            return 200, scale_of(dep)
        if sub not in (None, "status") or (sub == "status" and not res.status_subresource):
            raise ApiError(404, "NotFound", NOT_FOUND)
        if method == "GET" and name is None:
            items = store.list(res, ns if res.namespaced else None, query.get("labelSelector"))
            if query.get("fieldSelector"):
                items = fields.select(res.builtin, res.namespaced, items, query["fieldSelector"])
            items, list_meta = page(items, query, store.revision)
            if "as=PartialObjectMetadataList" in accept:
                return 200, {
                    "apiVersion": "meta.k8s.io/v1",
                    "kind": "PartialObjectMetadataList",
                    "metadata": list_meta,
                    "items": [
                        {
                            "apiVersion": "meta.k8s.io/v1",
                            "kind": "PartialObjectMetadata",
                            "metadata": i["metadata"],
                        }
                        for i in items
                    ],
                }
            if res.builtin == "secrets":
                ctl.secret_reads.append(url.path)
            return 200, {
                "apiVersion": res.group_version,
                "kind": f"{res.kind}List",
                "metadata": list_meta,
                "items": items,
            }
        if method == "GET":
            return 200, store.get(res, ns_key, name)
        if method == "POST":
            if name is not None or not isinstance(body, dict):
                raise ApiError(405, "MethodNotAllowed", "POST goes to a collection, with an object")
            rv = str((body.get("metadata") or {}).get("resourceVersion") or "")
            if rv.isdigit() and int(rv):  # etcd3 store.go Create: a 500, not silently dropped
                raise ApiError(500, "", "resourceVersion should not be set on objects to be created")
            return 201, store.create(res, ns_key, body, strict=strict)
        if method == "PUT":
            unconditional_update(res, store.get(res, ns_key, name), body)
            return 200, store.replace(res, ns_key, name, body or {}, status=sub == "status", strict=strict)
        if method == "PATCH":
            return 200, store.patch(
                res, ns_key, name, body, status=sub == "status", content_type=content_type, strict=strict
            )
        if method == "DELETE":
            if name is None:
                raise ApiError(405, "MethodNotAllowed", "deletecollection is not emulated")
            obj = store.delete(res, ns_key, name)  # the volume data goes when the claim is gone
            if res.builtin == "namespaces":
                obj["status"] = {"phase": "Terminating"}
                return 200, obj
            if (
                res.custom
                or res.group == "velero.io"
                or res.builtin in ("persistentvolumeclaims", "services", "pods")
            ):
                return 200, obj  # what the API returns for these (PVCs: pending their finalizer; CRs)
            return 200, {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {
                    "name": name,
                    "group": res.group,
                    "kind": res.plural,
                    "uid": obj["metadata"]["uid"],
                },
            }
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported")
