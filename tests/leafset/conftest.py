"""The rollout tests' world (schema, store, models ctr@3 / ctr@5 / eng@1) and process runner."""
from tests.rollout.conftest import world  # noqa: F401
