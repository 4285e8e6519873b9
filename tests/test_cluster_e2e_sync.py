"""The end-to-end sync tests (real clients on real folders) run again against a cluster
node: the same ``server`` fixture, its ``server_overrides`` naming a cluster here."""

import pytest

from test_e2e_sync import (
    test_a_deleted_directory_keeps_what_was_edited_inside_it_elsewhere,
    test_a_directory_moved_in_from_outside_brings_what_is_inside_it,
    test_catching_up_never_replays_the_clients_own_changes, test_conflict_keeps_both_versions_in_both_folders,
    test_create_update_delete_propagate, test_initial_sync_pulls_first_then_sends_local_files,
    test_moves_and_empty_nested_directories, test_server_restart_in_the_middle,
    test_two_hundred_files_at_once_and_a_20_mib_file,
)

# Collected again here, against a cluster node (the fixtures they need come along).
__all__ = [
    "test_a_deleted_directory_keeps_what_was_edited_inside_it_elsewhere",
    "test_a_directory_moved_in_from_outside_brings_what_is_inside_it",
    "test_catching_up_never_replays_the_clients_own_changes",
    "test_conflict_keeps_both_versions_in_both_folders", "test_create_update_delete_propagate",
    "test_initial_sync_pulls_first_then_sends_local_files", "test_moves_and_empty_nested_directories",
    "test_server_restart_in_the_middle", "test_two_hundred_files_at_once_and_a_20_mib_file",
]


@pytest.fixture
def server_overrides(cluster_block):
    """The tests' ``server`` is a cluster node here."""
    return {"cluster": cluster_block("sync-node")}


def test_the_servers_here_are_cluster_nodes(servers):
    """The re-run tests above get a cluster node from ``servers``, not an embedded server."""
    assert servers[0].config.handler.cluster is not None
