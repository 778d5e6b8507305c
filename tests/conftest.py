"""Fixtures every test package may use (tests/support/fixtures.py)."""
pytest_plugins = ("tests.support.fixtures",)
