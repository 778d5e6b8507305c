"""rootproc.rollout."""
