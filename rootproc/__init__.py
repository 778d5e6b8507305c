"""rootproc."""
