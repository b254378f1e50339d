"""One module per `python -m app` subcommand: `HELP`, `add_arguments(parser)`, `run(config, args) -> int`."""
