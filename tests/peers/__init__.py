"""Adapters that run other projects' own test suites against batchcrew (see docs/testing.md)."""
