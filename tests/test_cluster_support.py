"""The cluster tests skip where PostgreSQL or Redis cannot be reached, except under CI,
where they fail (so a green CI always ran them)."""

import pytest

import cluster_support
from cluster_support import free_port


@pytest.mark.parametrize("check, name, url", [
    (cluster_support.database_available, "DATABASE", "postgresql://root@127.0.0.1:{port}/test"),
    (cluster_support.redis_available, "REDIS", "redis://127.0.0.1:{port}"),
])
def test_unreachable_services_skip_or_fail_under_ci(monkeypatch, check, name, url):
    monkeypatch.setattr(cluster_support, name, url.format(port=free_port()))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        check()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        check()


def test_schema_urls_keep_their_query():
    assert cluster_support.with_schema("postgresql://u@h/db", "s1") == \
        "postgresql://u@h/db?options=-csearch_path%3Ds1"
    assert cluster_support.with_schema("postgresql://u@h/db?sslmode=require", "s1") == \
        "postgresql://u@h/db?sslmode=require&options=-csearch_path%3Ds1"
