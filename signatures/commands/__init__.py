"""`trimmer` subcommands of the control plane: each module has ``main(argv) -> int``."""
