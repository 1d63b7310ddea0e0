"""Pydantic models at the store's edge: what a backup is, as written in its manifest."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, Field, field_validator

from blocks.store import Compression, Encryption
from tasks.components.registry import ROUTINE_KINDS, BackupKind
from tasks.ids import check_component_name, check_object_name, parse_backup_id
from tasks.storage.layout import MANIFEST_NAME  # noqa: F401 - the manifest's name, kept importable here

KIND_LABEL = "kind"
# labels of backups written before kinds existed: their purpose said what they were
_LEGACY_PURPOSE = {"pre-restore-safety": BackupKind.safety, "forensic": BackupKind.forensic}


def kind_label(value: str | BackupKind) -> str:
    """The `kind` label's value, or BadInput naming the kinds there are."""
    try:
        return BackupKind(value).value
    except ValueError:
        from tasks.errors import BadInput

        raise BadInput(
            f"unknown backup kind {value!r}: use one of {', '.join(k.value for k in BackupKind)}"
        ) from None


class StoredObject(BaseModel):
    """One stored object of a backup: sizes and sha256 of the stored bytes and of the raw stream."""

    name: str
    key: str
    size: int = Field(ge=0, description="bytes as stored (compressed, encrypted)")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    raw_size: int = Field(ge=0, description="bytes of the stream the engine produced")
    raw_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    compression: Compression
    encryption: Encryption
    version_id: str | None = Field(default=None, description="S3 object version, when versioned")
    meta: dict[str, Any] = Field(default_factory=dict)

    _check_name = field_validator("name")(lambda cls, v: check_object_name(v))


MANIFEST_SCHEMA = 1  # the newest manifest format this version reads (and the one it writes)


class Manifest(BaseModel):
    """A backup exists when, and only when, its manifest is stored. Written last."""

    schema_version: int = MANIFEST_SCHEMA
    id: str
    component: str
    source_time: AwareDatetime = Field(description="time of the source snapshot the data reflects")
    started_at: AwareDatetime
    finished_at: AwareDatetime
    objects: list[StoredObject]
    engine: dict[str, Any] = Field(default_factory=dict, description="engine facts")
    fingerprint: dict[str, Any] | None = Field(default=None, description="content fingerprint")
    expires_at: AwareDatetime | None = None
    verified_at: AwareDatetime | None = Field(default=None, description="read back after write")
    labels: dict[str, str] = Field(default_factory=dict)
    signature: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{16}:[0-9a-f]{64}$",
        description="on a store with an encryption key: '<key id>:<HMAC-SHA256 of the body>' "
        "(tasks/storage/signing.py); none on a store without one",
    )
    checksum: str | None = Field(
        default=None, description="sha256 of the body: this manifest without checksum and signature"
    )

    def body(self) -> bytes:
        """What the checksum and the signature cover: everything but themselves, as JSON (a
        manifest written before signatures has the same body as before)."""
        return self.model_dump_json(exclude={"checksum", "signature"}).encode()

    def computed_checksum(self) -> str:
        return hashlib.sha256(self.body()).hexdigest()

    def sealed(self) -> Manifest:
        return self.model_copy(update={"checksum": self.computed_checksum()})

    def stored(self) -> bytes:
        """The bytes written to the store (without a `signature` field when unsigned: a store
        without a key writes its manifests exactly as before)."""
        unsigned = {"signature"} if self.signature is None else None
        return self.model_dump_json(indent=2, exclude=unsigned).encode()

    @field_validator("id")
    @classmethod
    def _id_is_valid(cls, value: str) -> str:
        parse_backup_id(value)
        return value

    @field_validator("component")
    @classmethod
    def _component_is_valid(cls, value: str) -> str:
        return check_component_name(value)

    @property
    def kind(self) -> BackupKind:
        """Why it was taken (labels["kind"]); unlabelled old backups by their purpose, else on-demand."""
        raw = self.labels.get(KIND_LABEL)
        if raw in BackupKind._value2member_map_:
            return BackupKind(raw)
        if raw is not None:  # a kind we do not know is never trusted as a routine backup
            return BackupKind.forensic
        return _LEGACY_PURPOSE.get(self.labels.get("purpose", ""), BackupKind.on_demand)

    @property
    def routine(self) -> bool:
        """Scheduled or on-demand: the only kinds 'latest', drills and retention's protection use."""
        return self.kind in ROUTINE_KINDS

    @property
    def size(self) -> int:
        return sum(o.size for o in self.objects)

    @property
    def raw_size(self) -> int:
        return sum(o.raw_size for o in self.objects)

    def object(self, name: str) -> StoredObject:
        for obj in self.objects:
            if obj.name == name:
                return obj
        raise KeyError(f"backup {self.id} has no object {name!r}")

    def age(self, now: datetime | None = None) -> float:
        return ((now or datetime.now(UTC)) - self.source_time).total_seconds()

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "component": self.component,
            "source_time": self.source_time.isoformat(),
            "objects": len(self.objects),
            "size": self.size,
            "raw_size": self.raw_size,
            "kind": self.kind.value,
        }
