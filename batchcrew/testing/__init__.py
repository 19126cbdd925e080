"""Test helpers: a local AWS Batch emulator and pytest fixtures."""
