"""The REST API and versions tests of an embedded server, run again against
a cluster node (PostgreSQL index and journal, Redis bus): the same ``server`` fixture
name, started in cluster mode here. Tests that restart a server, fake a full disk or
read the SQLite file are left to the embedded mode."""

import pytest

from cluster_support import cluster_block, pg_schema  # noqa: F401 - fixtures
from test_api import (  # noqa: F401 - collected again here, against a cluster node
    test_changes_journal_upload_update_delete, test_changes_parameters, test_download_errors,
    test_download_range_head_and_etag, test_hash_mismatch_changes_nothing, test_odd_headers_never_get_a_500,
    test_preconditions, test_put_is_post_and_update_replaces, test_sync_malformed_bodies,
    test_sync_operations, test_unknown_paths_are_json_404, test_upload_conflicts_with_directories_and_files,
    test_upload_then_list_metadata_download,
)
from test_versions_api import (  # noqa: F401
    test_a_move_keeps_the_history_with_the_new_path, test_a_restore_and_an_upload_on_the_same_base_one_wins,
    test_deletes_keep_files_and_folders_keep_everything_below, test_restore_honours_if_match,
    test_restore_is_an_update_journalled_and_kept_in_turn, test_restore_of_a_deleted_file_and_to_another_path,
    test_unknown_ids_and_bad_bodies,
)
from tests.support import http, server  # noqa: F401 - fixtures


@pytest.fixture
def server_overrides(cluster_block):
    """The tests' ``server`` is a cluster node here."""
    return {"cluster": cluster_block("api-node")}


def test_the_server_here_is_a_cluster_node(server):
    assert server.service.node.node_id == "api-node"
    assert type(server.service.index).__name__ == "PgIndex"
