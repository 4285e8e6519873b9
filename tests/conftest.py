"""Shared pytest fixtures. pytest-twisted installs the reactor; never import it at module level."""

import pytest


@pytest.fixture(scope="session")
def reactor():
    from twisted.internet import reactor

    return reactor
