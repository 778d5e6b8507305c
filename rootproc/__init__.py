"""The root: fetch features, preprocess, trim per model, fan out to leaves, merge.

The request path, in the order a score request takes it: `server` (the loop
and the client socket) -> `intake` (checks) -> `scoring` (fetch,
preprocess, trim, hand over) -> `router` (sends, replies, retries,
deadlines; `leaf_message` encodes, `reply` merges) -> back to the client.
Beside it: `links` (leaf links as the loop runs them, over `leaves` and
`shm_link`), `follow` (the config follower thread), `active` and
`agreement` (what a config serves and may trim), `config` and `defaults`.
"""
