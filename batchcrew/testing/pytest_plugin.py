"""The pytest plugin: fixtures for testing code that uses batchcrew."""
