"""rootproc.leaves.replicas."""
