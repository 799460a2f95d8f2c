"""The profile domain: one profile per person, stitched from every identifier they use.

Start with `change` (what one event changes), `store` (how changes are applied in Redis by
`cdp/lua/profiles.lua`) and `reader` (the read interface other packages use). Around them:
`identity` (identifiers and their normal forms), `consent`, `keyspace` (every Redis key
name), `worker` (the consumer group that applies the events stream), `replay` (rebuilding
from ClickHouse), `history` (timeline and merges), `privacy` (export and erasure)."""
