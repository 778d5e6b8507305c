"""leafproc."""
