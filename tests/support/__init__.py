"""Helpers shared by the integration tests: real processes (`procs`) and tiny
TorchScript models in a model repository (`models`). Fixtures: `fixtures`."""
