"""The config store on ZooKeeper (``zk://HOST:PORT[,...]/CHROOT``), through kazoo.

- `store`: `ZooKeeperStore`, the config store's interface on znodes (stage
  records, bundles, schemas, the audit log, member nodes)
- `ensemble`: the connection, its errors, and blobs chunked below the znode limit
- `watch`: the watches that wake followers, and the member watch for discovery
- `settings`: `ZooKeeperSettings` (timeouts, auth) as roots and leaves configure it
"""
