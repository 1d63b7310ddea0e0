"""What the API server checks and rewrites on every write, as a real one does.

- Names (kubernetes staging/src/k8s.io/apimachinery/pkg/util/validation/validation.go,
  IsDNS1123Subdomain / IsDNS1123Label; pkg/apis/core/validation: namespaces and services need a
  DNS label, most other kinds a DNS subdomain; custom resources a DNS subdomain,
  apiextensions-apiserver customresource_handler); RBAC objects a path segment (so
  'system:discovery'). generateName: at most 58 characters are
  kept and 5 random ones appended (apiserver/pkg/storage/names/generate.go).
- Label keys and values (IsQualifiedName, IsValidLabelValue: values at most 63 characters).
- Structural-schema pruning of custom resources (apiextensions "Specifying a structural schema",
  pruning unknown fields): Velero's CRDs are generated from pkg/apis/velero/v1/*_types.go, so a
  field the types do not declare is silently dropped on create/update, unless the request asks
  `?fieldValidation=Strict` (kubectl's default): then it is a 400 "strict decoding error".
"""

from __future__ import annotations

import random
import re
from typing import Any

from sandbox.k8s_emulator.errors import ApiError

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
LABEL_NAMED_KINDS = {"namespaces", "services"}  # ValidateNamespaceName, ValidateServiceName
# pkg/apis/rbac/validation ValidateRBACName = path.IsValidPathSegmentName: any name that is a
# path segment, so the bootstrap roles' 'system:discovery', 'system:node' are valid
PATH_SEGMENT_KINDS = {"roles", "rolebindings", "clusterroles", "clusterrolebindings"}
GENERATE_SUFFIX = "bcdfghjklmnpqrstvwxz2456789"  # utilrand's alphabet: no vowels, no 0/1/3

SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
    "start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)


def generated_name(prefix: str) -> str:
    return prefix[:58] + "".join(random.choice(GENERATE_SUFFIX) for _ in range(5))


def invalid(kind: str, name: str, causes: list[str]) -> ApiError:
    return ApiError(
        422,
        "Invalid",
        f'{kind} "{name}" is invalid: ' + ", ".join(causes),
        {"name": name, "kind": kind, "causes": [{"message": c} for c in causes]},
    )


def name_errors(plural: str, name: str) -> list[str]:
    if plural in PATH_SEGMENT_KINDS:
        if name in (".", "..") or "/" in name or "%" in name:
            return [f"metadata.name: Invalid value: \"{name}\": may not be '.' or '..' or contain '/' or '%'"]
        return []
    if plural in LABEL_NAMED_KINDS:
        ok, limit, msg = DNS1123_LABEL.fullmatch(name), 63, LABEL_MSG
    else:
        ok, limit, msg = DNS1123_SUBDOMAIN.fullmatch(name), 253, SUBDOMAIN_MSG
    out = []
    if not ok:
        out.append(f'metadata.name: Invalid value: "{name}": {msg}')
    if len(name) > limit:
        out.append(f'metadata.name: Invalid value: "{name}": must be no more than {limit} characters')
    return out


def label_errors(labels: dict[str, Any]) -> list[str]:
    out = []
    for key, value in (labels or {}).items():
        prefix, _, base = str(key).rpartition("/")
        if (
            not LABEL_NAME.fullmatch(base)
            or len(base) > 63
            or (prefix and (not DNS1123_SUBDOMAIN.fullmatch(prefix) or len(prefix) > 253))
        ):
            out.append(f'metadata.labels: Invalid value: "{key}": name part must be a qualified name')
        if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.fullmatch(value):
            out.append(
                f'metadata.labels: Invalid value: "{value}": a valid label must be an empty string or '
                "consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
                "alphanumeric character, and must be no more than 63 characters"
            )
    return out


def validate_metadata(kind: str, plural: str, obj: dict[str, Any], creating: bool) -> None:
    meta = obj["metadata"]
    causes = (name_errors(plural, meta["name"]) if creating else []) + label_errors(meta.get("labels"))
    if causes:
        raise invalid(kind, meta["name"], causes)


def _fields(text: str) -> set[str]:
    return set(text.split())


# Velero's CRD schemas (pkg/apis/velero/v1/*_types.go), the fields of spec and status; deeper
# levels are kept as they come.
VELERO_FIELDS: dict[str, dict[str, set[str]]] = {
    "backups": {
        "spec": _fields(
            "metadata includedNamespaces excludedNamespaces includedResources excludedResources "
            "includedClusterScopedResources excludedClusterScopedResources "
            "includedNamespaceScopedResources excludedNamespaceScopedResources labelSelector "
            "orLabelSelectors snapshotVolumes ttl volumeGroupSnapshotLabelKey includeClusterResources "
            "hooks storageLocation volumeSnapshotLocations defaultVolumesToRestic "
            "defaultVolumesToFsBackup orderedResources csiSnapshotTimeout itemOperationTimeout "
            "resourcePolicy snapshotMoveData datamover uploaderConfig"
        ),
        "status": _fields(
            "version formatVersion expiration phase queuePosition validationErrors startTimestamp "
            "completionTimestamp volumeSnapshotsAttempted volumeSnapshotsCompleted failureReason "
            "warnings errors progress csiVolumeSnapshotsAttempted csiVolumeSnapshotsCompleted "
            "backupItemOperationsAttempted backupItemOperationsCompleted backupItemOperationsFailed "
            "hookStatus"
        ),
    },
    "restores": {
        "spec": _fields(
            "backupName scheduleName includedNamespaces excludedNamespaces includedResources "
            "excludedResources namespaceMapping labelSelector orLabelSelectors restorePVs "
            "restoreStatus preserveNodePorts includeClusterResources hooks existingResourcePolicy "
            "itemOperationTimeout resourceModifier uploaderConfig"
        ),
        "status": _fields(
            "phase validationErrors warnings errors failureReason startTimestamp completionTimestamp "
            "progress restoreItemOperationsAttempted restoreItemOperationsCompleted "
            "restoreItemOperationsFailed hookStatus"
        ),
    },
    "deletebackuprequests": {"spec": {"backupName"}, "status": {"phase", "errors"}},
}


def unknown_fields(obj: dict[str, Any], schema: dict[str, set[str]] | None) -> list[str]:
    """The paths ('spec.foo') of the fields a custom resource's schema does not declare."""
    if not schema:
        return []
    out = [k for k in obj if k not in ("apiVersion", "kind", "metadata", "spec", "status")]
    for part, known in schema.items():
        if isinstance(obj.get(part), dict):
            out += [f"{part}.{k}" for k in obj[part] if k not in known]
    return out


def prune(obj: dict[str, Any], schema: dict[str, set[str]] | None) -> dict[str, Any]:
    if not schema:
        return obj
    for part, known in schema.items():
        if isinstance(obj.get(part), dict):
            obj[part] = {k: v for k, v in obj[part].items() if k in known}
    for key in [k for k in obj if k not in ("apiVersion", "kind", "metadata", "spec", "status")]:
        del obj[key]
    return obj


def check_fields(kind: str, obj: dict[str, Any], schema: dict[str, set[str]] | None, strict: bool) -> None:
    """fieldValidation=Strict: a field the schema does not declare is a 400, not silently pruned
    (apiserver/pkg/endpoints/handlers/rest.go fieldValidation; the decoder's message)."""
    unknown = unknown_fields(obj, schema) if strict else []
    if unknown:
        raise ApiError(
            400,
            "BadRequest",
            f'{kind} in version "v1" cannot be handled as a {kind}: strict decoding error: '
            + ", ".join(f'unknown field "{path}"' for path in unknown),
        )
