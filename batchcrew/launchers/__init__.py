"""Launchers: how workers are started and ended."""
