"""The tests of /ws inside the real server, run again against a cluster node: the same
``server`` fixture, its ``server_overrides`` naming a cluster here."""

import pytest

from test_ws_service import (
    server, test_changes_from_rest_ws_and_sync_arrive_in_journal_order,
    test_rest_upload_broadcast_to_others_with_seq_not_to_uploader,
    test_ws_file_operation_applied_on_disk_journalled_and_broadcast,
)

# Collected again here, against a cluster node (the fixtures they need come along).
__all__ = [
    "server", "test_changes_from_rest_ws_and_sync_arrive_in_journal_order",
    "test_rest_upload_broadcast_to_others_with_seq_not_to_uploader",
    "test_ws_file_operation_applied_on_disk_journalled_and_broadcast",
]


@pytest.fixture
def server_overrides(cluster_block):
    """The tests' ``server`` is a cluster node here."""
    return {"cluster": cluster_block("ws-node")}
