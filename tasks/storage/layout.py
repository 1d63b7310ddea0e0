"""Every key the project writes or reads in a store, in one place (one method per kind of key).

    <prefix>/<component>/<YYYY-MM-DD>/<backup-id>/<object>         a backup's objects
    <prefix>/<component>/<YYYY-MM-DD>/<backup-id>/manifest.json    written last: the backup exists
    <prefix>/_index/<component>.json                               manifest cache (storage/index.py)
    <prefix>/_health/<component>/<backup-id>.json                   what is known: verified / damaged
    <prefix>/recovery-points/<YYYY-MM-DD>/<rp-id>.json             recovery points
    <prefix>/drills/<YYYY-MM-DD>/<drill-id>.json                   restore drills
    <prefix>/restores/<YYYY-MM-DD>/<restore-id>/record.json        a restore (and its rollback)
    <prefix>/restores/<YYYY-MM-DD>/<restore-id>/current-state.json state found before it
    <prefix>/restores/safety-backups/<backup-id>.json              a safety backup's restore
    <prefix>/dr-runs/<run-id>/run.json, NN-<step>.json             full cluster restore runs
    <prefix>/_prefect-results/                                     Prefect task results

Names starting with "_" and the record spaces can never be component folders (component names
are lower-case words joined by single hyphens, and none of these is registered). Backends below
this deal only in bytes under whatever key they are given; nothing else builds keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from tasks.errors import BadInput
from tasks.ids import check_component_name, check_object_name, parse_backup_id, parse_record_id

if TYPE_CHECKING:
    from blocks.store import StoreBlock

MANIFEST_NAME = "manifest.json"
RECOVERY_POINTS = "recovery-points"
DRILLS = "drills"
RESTORES = "restores"
DR_RUNS = "dr-runs"
INDEX_DIR = "_index"
HEALTH_DIR = "_health"
RESULTS_DIR = "_prefect-results"
RESTORE_RECORD = "record.json"
RESTORE_STATE = "current-state.json"
DR_RUN_RECORD = "run.json"
SAFETY_MARKS = "safety-backups"


def _day(when: datetime) -> str:
    return f"{when:%Y-%m-%d}"


@dataclass(frozen=True)
class StoreLayout:
    """The key layout under one store prefix."""

    prefix: str

    @classmethod
    def of(cls, store: StoreBlock) -> StoreLayout:
        return cls(store.prefix)

    def _join(self, *parts: str) -> str:
        return "/".join([self.prefix, *parts])

    # --- backups --------------------------------------------------------------------------

    def component_dir(self, component: str) -> str:
        """<prefix>/<component>: every backup of one component lives under it."""
        return self._join(component)

    def backup_dir(self, backup_id: str) -> str:
        """<prefix>/<component>/<YYYY-MM-DD>/<backup-id>"""
        component, started = parse_backup_id(backup_id)
        return self._join(component, _day(started), backup_id)

    def object_key(self, backup_id: str, name: str) -> str:
        return f"{self.backup_dir(backup_id)}/{check_object_name(name)}"

    def manifest_key(self, backup_id: str) -> str:
        return f"{self.backup_dir(backup_id)}/{MANIFEST_NAME}"

    def is_manifest_of(self, key: str, component: str) -> bool:
        """`key` is where a backup of `component` keeps its manifest: <component>/<day>/<id>/
        manifest.json, a well-formed id of that component on the day it names. Any other
        manifest.json under the folder (a sync tool's leftover, a copy made by hand) is no
        backup: not listed, not judged unreadable, and no reason to touch the backups near it."""
        backup_id = backup_id_of(key)
        if not is_manifest_key(key) or backup_id is None:
            return False
        try:
            return parse_backup_id(backup_id)[0] == component and key == self.manifest_key(backup_id)
        except BadInput:
            return False

    # --- the manifest cache -------------------------------------------------------------------

    def index_key(self, component: str) -> str:
        """<prefix>/_index/<component>.json"""
        return self._join(INDEX_DIR, f"{check_component_name(component)}.json")

    # --- what is known about each backup (storage/health.py) -------------------------------

    def health_dir(self, component: str) -> str:
        """<prefix>/_health/<component>"""
        return self._join(HEALTH_DIR, check_component_name(component))

    def health_key(self, backup_id: str) -> str:
        """<prefix>/_health/<component>/<backup-id>.json (recovery points: component 'recovery-point')"""
        component, _ = parse_backup_id(backup_id)
        return f"{self.health_dir(component)}/{backup_id}.json"

    def verified_key(self, backup_id: str) -> str:
        """<prefix>/_health/<component>/<backup-id>.verified.json: the sweep's 'verified' verdicts
        live apart from the damage findings (health_key), so a slow sweep's verdict can never
        overwrite damage recorded while it read (storage/health.py)."""
        component, _ = parse_backup_id(backup_id)
        return f"{self.health_dir(component)}/{backup_id}.verified.json"

    def health_keys(self, backup_id: str) -> list[str]:
        """Every record of what is known about `backup_id` (retention deletes them with it)."""
        return [self.health_key(backup_id), self.verified_key(backup_id)]

    # --- records --------------------------------------------------------------------------

    def records_dir(self, space: str) -> str:
        """<prefix>/<space>: one kind of record (RECOVERY_POINTS, DRILLS, RESTORES, DR_RUNS)."""
        if space not in (RECOVERY_POINTS, DRILLS, RESTORES, DR_RUNS):
            raise BadInput(f"unknown record space {space!r}")
        return self._join(space)

    def recovery_point_key(self, rp_id: str) -> str:
        started = parse_record_id(rp_id, "recovery-point")
        return self._join(RECOVERY_POINTS, _day(started), f"{rp_id}.json")

    def drill_key(self, drill_id: str, started: datetime) -> str:
        return self._join(DRILLS, _day(started), f"{drill_id}.json")

    def restore_dir(self, restore_id: str) -> str:
        started = parse_record_id(restore_id, "restore")
        return self._join(RESTORES, _day(started), restore_id)

    def restore_record_key(self, restore_id: str) -> str:
        return f"{self.restore_dir(restore_id)}/{RESTORE_RECORD}"

    def restore_state_key(self, restore_id: str) -> str:
        return f"{self.restore_dir(restore_id)}/{RESTORE_STATE}"

    def safety_mark_key(self, backup_id: str) -> str:
        """<prefix>/restores/safety-backups/<backup-id>.json: which restore took it, how it ended."""
        parse_backup_id(backup_id)
        return self._join(RESTORES, SAFETY_MARKS, f"{backup_id}.json")

    def dr_run_key(self, run_id: str) -> str:
        parse_record_id(run_id, "dr")
        return self._join(DR_RUNS, run_id, DR_RUN_RECORD)

    def dr_step_key(self, run_id: str, index: int, step: str) -> str:
        parse_record_id(run_id, "dr")
        return self._join(DR_RUNS, run_id, f"{index:02d}-{step}.json")

    # --- Prefect results ------------------------------------------------------------------

    def results_dir(self) -> str:
        """<prefix>/_prefect-results: task results persist beside the backups they describe."""
        return self._join(RESULTS_DIR)


def layout(store: StoreBlock) -> StoreLayout:
    return StoreLayout.of(store)


# --- reading keys back (no store needed) -----------------------------------------------------


def is_manifest_key(key: str) -> bool:
    return key.endswith("/" + MANIFEST_NAME)


def backup_dir_of(key: str) -> str:
    """The backup folder a backup's object key is in."""
    return key.rsplit("/", 1)[0]


def manifest_key_beside(key: str) -> str:
    """The manifest key of the backup a backup's object key belongs to."""
    return f"{backup_dir_of(key)}/{MANIFEST_NAME}"


def backup_id_of(key: str) -> str | None:
    """The backup-id folder of `<...>/<backup-id>/<name>`, unchecked (None for a shorter key)."""
    parts = key.rsplit("/", 2)
    return parts[-2] if len(parts) == 3 else None


def split_component_key(key: str, component_dir: str) -> tuple[str, str, str] | None:
    """(day, backup-id, name) of `<component_dir>/<day>/<backup-id>/<name>`; None for keys of
    any other shape (not ours to judge)."""
    base = component_dir.rstrip("/") + "/" if component_dir else ""
    if not key.startswith(base):
        return None
    parts = key[len(base) :].split("/")
    if len(parts) != 3:
        return None
    return parts[0], parts[1], parts[2]


# convenience spellings used across tasks/ and tests/
def backup_prefix(store: StoreBlock, backup_id: str) -> str:
    """<prefix>/<component>/<YYYY-MM-DD>/<backup-id>"""
    return layout(store).backup_dir(backup_id)


def component_prefix(store: StoreBlock, component: str) -> str:
    return layout(store).component_dir(component)
