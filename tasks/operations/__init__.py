"""Operations over components and the store: recovery points, restore plans, the pre-restore
checklist, drills and disaster recovery."""
