"""Small, reusable pieces: the store, the catalog, and one module per component."""
