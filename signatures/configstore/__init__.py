"""signatures.configstore."""
