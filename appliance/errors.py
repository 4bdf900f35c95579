"""Errors the command line turns into a message and an exit status."""


class ReaderError(Exception):
    """The database cannot be read (missing, not a database, too old)."""


class DatabaseUnavailable(ReaderError):
    """The database cannot be used just now (locked, full, damaged): not the request's
    fault; the web API answers 503."""
