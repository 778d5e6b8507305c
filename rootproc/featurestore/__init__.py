"""rootproc.featurestore."""
