"""signatures.derive.script_graph."""
