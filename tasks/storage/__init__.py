"""Where backups live: backends move bytes; codec, session, catalog, records, replication and
retention give them meaning; layout names every key."""
