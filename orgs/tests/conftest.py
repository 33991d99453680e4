"""Fixtures shared by the orgs test modules."""

import pytest

from tests.fixtures import create_org, unique


@pytest.fixture
def quiet_org():
    """An org no other test talks to: per-IP counters are per org, and every test (and
    every server of this run) connects from 127.0.0.1."""
    return create_org(unique("r"), f"{unique('h')}.test")
