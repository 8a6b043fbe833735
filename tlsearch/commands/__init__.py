"""One module per ``tlsearch`` subcommand: ``add_parser(sub)`` and ``run(args) -> int``."""
