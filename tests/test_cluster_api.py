"""The REST API, batch, concurrency and versions tests of an embedded server, run again against
a cluster node (PostgreSQL index and journal, Redis bus): the same ``server`` fixture
name, started in cluster mode here. Tests that restart a server, fake a full disk or
read the SQLite file are left to the embedded mode."""

import pytest

from test_api import (
    test_changes_journal_upload_update_delete, test_changes_parameters, test_download_errors,
    test_download_range_head_and_etag, test_hash_mismatch_changes_nothing, test_odd_headers_never_get_a_500,
    test_preconditions, test_put_is_post_and_update_replaces, test_sync_malformed_bodies,
    test_sync_operations, test_unknown_paths_are_json_404, test_upload_conflicts_with_directories_and_files,
    test_upload_then_list_metadata_download,
)
from test_versions_api import (
    test_a_move_keeps_the_history_with_the_new_path, test_a_restore_and_an_upload_on_the_same_base_one_wins,
    test_deletes_keep_files_and_folders_keep_everything_below, test_restore_honours_if_match,
    test_restore_is_an_update_journalled_and_kept_in_turn, test_restore_of_a_deleted_file_and_to_another_path,
    test_unknown_ids_and_bad_bodies,
)
from test_api_concurrency import (
    test_concurrent_uploads_to_one_path_leave_one_complete_version,
    test_downloads_during_replacements_match_their_etag, test_every_change_is_published_once_in_journal_order,
    test_files_written_by_other_programs_are_journalled, test_three_hundred_simultaneous_uploads,
    test_twenty_concurrent_uploads,
)
from test_batch_api import (
    subscribe, test_a_batch_download_returns_exactly_the_stored_bytes_and_their_metadata,
    test_a_batch_upload_lands_every_file_each_journalled_and_broadcast,
    test_client_downloads_waiting_at_once_travel_in_batches,
    test_client_uploads_waiting_at_once_travel_in_batches,
    test_each_file_of_a_batch_succeeds_or_fails_on_its_own, test_uploads_of_one_path_in_a_batch_apply_in_order,
)
from test_delta_api import (
    test_a_base_that_changed_is_412_and_nothing_changes,
    test_a_delta_upload_sends_only_the_change_and_is_installed,
    test_an_upload_leaves_its_block_list_made_as_it_streamed_in,
)

# Collected again here, against a cluster node (the fixtures they need come along).
__all__ = [
    "test_changes_journal_upload_update_delete", "test_changes_parameters", "test_download_errors",
    "test_download_range_head_and_etag", "test_hash_mismatch_changes_nothing",
    "test_odd_headers_never_get_a_500", "test_preconditions", "test_put_is_post_and_update_replaces",
    "test_sync_malformed_bodies", "test_sync_operations", "test_unknown_paths_are_json_404",
    "test_upload_conflicts_with_directories_and_files", "test_upload_then_list_metadata_download",
    "test_a_move_keeps_the_history_with_the_new_path",
    "test_a_restore_and_an_upload_on_the_same_base_one_wins",
    "test_deletes_keep_files_and_folders_keep_everything_below", "test_restore_honours_if_match",
    "test_restore_is_an_update_journalled_and_kept_in_turn",
    "test_restore_of_a_deleted_file_and_to_another_path", "test_unknown_ids_and_bad_bodies",
    "test_concurrent_uploads_to_one_path_leave_one_complete_version",
    "test_downloads_during_replacements_match_their_etag",
    "test_every_change_is_published_once_in_journal_order",
    "test_files_written_by_other_programs_are_journalled", "test_three_hundred_simultaneous_uploads",
    "test_twenty_concurrent_uploads", "subscribe",
    "test_a_batch_download_returns_exactly_the_stored_bytes_and_their_metadata",
    "test_a_batch_upload_lands_every_file_each_journalled_and_broadcast",
    "test_client_downloads_waiting_at_once_travel_in_batches",
    "test_client_uploads_waiting_at_once_travel_in_batches",
    "test_each_file_of_a_batch_succeeds_or_fails_on_its_own",
    "test_uploads_of_one_path_in_a_batch_apply_in_order",
    "test_a_base_that_changed_is_412_and_nothing_changes",
    "test_a_delta_upload_sends_only_the_change_and_is_installed",
    "test_an_upload_leaves_its_block_list_made_as_it_streamed_in",
]


@pytest.fixture
def server_overrides(cluster_block):
    """The tests' ``server`` is a cluster node here."""
    return {"cluster": cluster_block("api-node")}


def test_the_server_here_is_a_cluster_node(server):
    assert server.service.node.node_id == "api-node"
    assert type(server.service.index).__name__ == "PgIndex"
