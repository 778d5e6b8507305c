"""The root's side of its links to leaves.

- `links`: `LeafLinks`, the links as the serving loop runs them (health ticks,
  connection events, reconciling with a new config or the leaves discovered
  on ZooKeeper, retiring links that drained)
- `replicas`: one `LeafLink` per replica endpoint (DEALER, pings and pongs,
  health, outstanding load) and the `LeafPool` that picks the best replica
  for a model
- `wanted`: `wanted_leaves`, which leaves a config and discovery call for
- `rotation`: why a replica is out of rotation (the reasons), and noting each
  change once: logged and counted
- `encoding`: a model's message, the gather kernel writing the trim plan's
  columns into a shared-memory slot or a payload frame (LZ4 when asked)
- `shm`: the shared-memory ring of a link to a leaf on the same node
- `agreement`: which version a healthy leaf serves, and whether the root may
  trim for it (the leaf's signature hash agrees with the config's)
"""
