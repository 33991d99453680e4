"""Fixtures of the calls tests: a real coturn beside a Siphera server configured for it."""

from calls.tests.coturn import turn_deployment  # noqa: F401  (a fixture)
from calls.tests.recording_support import recording_deployment  # noqa: F401,E402  (a fixture)
from calls.tests.test_aiortc_call import loopback_only  # noqa: F401,E402  (a fixture)
