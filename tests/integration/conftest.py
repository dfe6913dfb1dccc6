"""Fixtures shared by the integration tests (each needs a real local Ray)."""

from tests.integration.test_campaign_smoke import ray_tmpdir  # noqa: F401
