"""One module per `otclust` subcommand, each with add_parser(subparsers) and a run(args) it binds."""
