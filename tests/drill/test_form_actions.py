"""What the approval form and the plan say a restore does, against what the component's restore
does: nothing it changes on the live server may be left out."""

from __future__ import annotations

from tasks.operations.plan import MODES, action_of
from tasks.verbs import restore_options


def test_a_postgres_restore_that_applies_the_roles_says_so():
    """Before: the action of a whole postgres restore (globals applied by default) said only
    'aside, then cut over ... renamed over': the roles of the whole server (attributes,
    passwords, memberships) changed with it, unsaid on the form an SRE approves; with
    cut_over=False it said 'nothing is renamed over' while missing roles were created."""
    whole = action_of("postgres", restore_options("postgres", {}))
    assert "roles" in whole and "whole server" in whole
    assert "roles" in MODES["postgres"]  # the plan (a whole restore)
    aside = action_of("postgres", restore_options("postgres", {"cut_over": False}))
    assert "aside only" in aside and "created" in aside and "roles" in aside
    # one database, no globals: no word of roles (it changes none)
    one = action_of("postgres", restore_options("postgres", {"databases": ["lambda"]}))
    assert "roles" not in one and "cut over" in one
    assert "roles" not in action_of(
        "postgres", restore_options("postgres", {"cut_over": False, "databases": ["x"]})
    )
    forced = action_of("postgres", restore_options("postgres", {"databases": ["x"], "include_globals": True}))
    assert "whole server" in forced
