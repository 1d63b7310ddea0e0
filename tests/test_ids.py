import pytest

from tasks.errors import BadInput
from tasks.ids import check_component_name, check_object_name, new_backup_id, parse_backup_id


def test_new_ids_parse_back():
    backup_id = new_backup_id("app-state")
    component, started = parse_backup_id(backup_id)
    assert component == "app-state" and started.tzinfo is not None


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "../etc/passwd",
        "postgres/../../x",
        "postgres-20260115T143000Z-1a2b3c/..",
        "postgres-20260115T143000Z-1A2B3C",
        "postgres-2026-01-15-1a2b3c",
        "x" * 300,
        "latest/",
        " postgres",
    ],
)
def test_bad_ids_are_rejected_with_a_hint(bad):
    with pytest.raises(BadInput, match="backup id"):
        parse_backup_id(bad)


@pytest.mark.parametrize("bad", ["", "Postgres", "pg_dump", "a/b", "../x", "x;rm", "-x"])
def test_bad_component_names(bad):
    with pytest.raises(BadInput, match="component name"):
        check_component_name(bad)


# "orders.partial-2024": the local store hides in-flight writes by that mark, so the backup
# failed at commit as if retention had collected it
@pytest.mark.parametrize("bad", ["", "..", "a/b", ".hidden", "x" * 201, "a\\b", "orders.partial-2024"])
def test_bad_object_names(bad):
    with pytest.raises(BadInput, match="object name"):
        check_object_name(bad)
