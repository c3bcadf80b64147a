"""Errors shown to users as one line by the command line (see :mod:`dalle_zero.cli.main`)."""


class DataError(ValueError):
    """A dataset, file or input that cannot be used, with what and where in the message."""
