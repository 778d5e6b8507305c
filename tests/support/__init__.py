"""Helpers shared by the integration tests: real processes (`procs`), tiny
TorchScript models in a model repository (`models`), and one model exported
in every format (`formats`, `format_models`). Fixtures: `fixtures`."""
