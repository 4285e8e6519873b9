"""The SQLite and PostgreSQL indexes offer the same interface (quantum_sync.server.indexapi):
a method added to one and not the other fails here."""

import inspect

import pytest
from twisted.application.service import IService

from quantum_sync.server.cluster.pgindex import PgIndex
from quantum_sync.server.index import Index
from quantum_sync.server.indexapi import IndexInterface

NAMES = sorted(name for name, _ in inspect.getmembers(IndexInterface, inspect.isfunction)
               if not name.startswith("_"))


#: What only a cluster node's index offers (the nodes' heartbeat rows, client ids across nodes).
CLUSTER_ONLY = {"claim_clients", "renew_clients", "release_clients", "bind_client", "prune_clients",
                "record_events", "recent_events"}


#: Both are services (started and stopped in their server's tree): IService's methods are
#: theirs by that interface, not the index's.
SERVICE = set(IService.names())


def _public(cls) -> set:
    """The public methods the class itself defines, beyond IService's."""
    return {name for name, value in vars(cls).items()
            if callable(value) and not name.startswith("_") and name not in SERVICE}


@pytest.mark.parametrize("cls", [Index, PgIndex])
@pytest.mark.parametrize("name", NAMES)
def test_each_index_has_the_method_with_its_parameters(cls, name):
    expected = list(inspect.signature(getattr(IndexInterface, name)).parameters)
    assert list(inspect.signature(getattr(cls, name)).parameters) == expected


@pytest.mark.parametrize("cls, extra", [(Index, set()), (PgIndex, CLUSTER_ONLY)])
def test_no_index_has_a_public_method_the_interface_lacks(cls, extra):
    assert _public(cls) - extra <= set(NAMES)
