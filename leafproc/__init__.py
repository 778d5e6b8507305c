"""The leaf process: load model versions from a repository, decode trimmed
batches without copying, check them against each model's signature, and score
them (dynamically batched) on GPU or CPU. Run it with ``python -m leafproc``;
the wire protocol is docs/protocol.md, "Root <-> leaf".

- `app`: the leaf as one object (build, run, close); `__main__`: its command line
- `server`: the I/O loop (ROUTER, replies, drain); `table`: which versions serve
  and how they join and leave; `worker`: one model version's thread (its
  artifact, TorchScript, exported program or AOTInductor package, loaded by
  signatures/repository/artifacts.py, which refuses a kind the leaf cannot load)
- `follower`: the thread that follows a config-store stage (over
  signatures/configstore/follower.py) and hands the loop its `Target`s
- `inbox`, `input_check`, `tensors`: shared-memory batches, the check of a
  batch against the model's signature, features for the model
- `settings`, `defaults`, `metrics`: settings, constants, Prometheus series
"""
