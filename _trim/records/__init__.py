"""_trim.records."""
