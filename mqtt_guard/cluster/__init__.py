"""Several brokers behaving as one, through Redis (issue 18): the engine-independent core.

- `filters.py`: this broker's deduplicated subscription filters, with reference counts and deltas;
- `table.py`: the other brokers' filters in a trie: which brokers want a topic;
- store/cluster.py: the Redis side (filter sets and their deltas, the per-broker inboxes).

docs/scaling.md explains the design and what the engine integration must do.
"""
