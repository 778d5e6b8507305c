"""signatures.repository."""
