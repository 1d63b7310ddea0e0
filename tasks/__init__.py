"""Reusable Prefect tasks and what they stand on: components, storage, operations, and the
engines' process runner."""
