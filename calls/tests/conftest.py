"""Fixtures of the calls tests: a real coturn beside a Siphera server configured for it."""

from calls.tests.coturn import turn_deployment  # noqa: F401  (a fixture)
