"""Throwaway real services on loopback for the demo, the tests and the benchmarks. Flows, tasks
and blocks never import it."""
