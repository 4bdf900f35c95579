"""Errors the command line turns into a message and an exit status."""


class ReaderError(Exception):
    """The database cannot be read (missing, not a database, too old)."""
