"""The tests of /ws inside the real server, run again against a cluster node: the same
``server`` fixture, its ``server_overrides`` naming a cluster here."""

import pytest

from cluster_support import cluster_block, pg_schema  # noqa: F401 - fixtures
from test_ws_service import (  # noqa: F401 - the fixture, and its tests collected again here
    server, test_changes_from_rest_ws_and_sync_arrive_in_journal_order,
    test_rest_upload_broadcast_to_others_with_seq_not_to_uploader,
    test_ws_file_operation_applied_on_disk_journalled_and_broadcast,
)
from test_ws_support import logged_failures  # noqa: F401 - fixture


@pytest.fixture
def server_overrides(cluster_block):
    """The tests' ``server`` is a cluster node here."""
    return {"cluster": cluster_block("ws-node")}
