"""How batches travel: ZeroMQ envelopes and headers, CURVE security, shared memory.

Nothing here needs the compiled kernel: the scoring client, ``trimmer keys``
and anything else that only talks to a root or a leaf import this package on
an unbuilt checkout.

- `protocol`: header frames, error kinds, LZ4, the scores and candidates frames
- `envelope`: ROUTER envelopes and request ids
- `model_key`: ``NAME@VERSION``
- `frames`: whole multipart messages in and out, cheaply
- `curve`, `zap`, `monitor`, `sockets`: CURVE keys, who gets in, why a handshake
  failed, binding plain and CURVE endpoints on one socket
- `shm`: shared-memory slot rings (writer) and segment mapping (reader)
- `process`: whether a pid still runs
"""
