"""One package or module per component of the backup table: each satisfies contract.py and is a
row of registry.py."""
