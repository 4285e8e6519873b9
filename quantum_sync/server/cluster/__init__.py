"""Several server nodes on one root: the index and journal in PostgreSQL
(:mod:`.pgindex`), locks across nodes (:mod:`.fence`), broadcasts through Redis
(:mod:`.redisbus`) delivered in journal order (:mod:`.feed`), events between nodes
(:mod:`.events`), one node watching the root (:mod:`.leader`), the live nodes
(:mod:`.presence`), one live connection per client id (:mod:`.liveclients`), client
ids bound to users (:mod:`.bindings`) and the versions restores read (:mod:`.versionreads`).
docs/cluster.md is the design.
"""
