"""signatures.derive.torchscript."""
