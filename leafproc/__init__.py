"""The leaf process: load model versions from a repository, decode trimmed
batches without copying, check them against each model's signature, and score
them (dynamically batched) on GPU or CPU. Run it with ``python -m leafproc``;
the wire protocol is docs/protocol.md, "Root <-> leaf"."""
