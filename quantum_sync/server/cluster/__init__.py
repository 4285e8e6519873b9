"""Several server nodes on one root: the index and journal in PostgreSQL
(:mod:`.pgindex`), locks across nodes (:mod:`.fence`), broadcasts through Redis
(:mod:`.redisbus`) delivered in journal order (:mod:`.feed`), one node watching the root
(:mod:`.leader`) and the live nodes (:mod:`.presence`). docs/cluster.md is the design.
"""
