"""signatures.runtime."""
