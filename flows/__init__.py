"""User-facing Prefect flows: one job each. Import the flow functions from their modules."""
