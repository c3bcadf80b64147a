"""The ``dalle`` command line: one module per subcommand, dispatched by :mod:`dalle_zero.cli.main`."""
