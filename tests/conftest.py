"""Shared pytest fixtures. pytest-twisted installs the reactor; never import it at module level."""

import pytest


@pytest.fixture(scope="session")
def reactor():
    from twisted.internet import reactor

    return reactor


@pytest.fixture
def server_overrides():
    """Handler keys the ``server`` fixtures add to their config: none here; a module that
    runs the same tests against a cluster node overrides it (one fixture, two modes)."""
    return {}
