"""One exception type for every problem a user can fix.

Each message names the problem and the fix. The CLI prints the message alone (no traceback);
notebooks show it as the cell's error.
"""


class OutlierBookError(Exception):
    """A problem with the user's input or environment, with a message that says how to fix it."""


class UnknownTaskError(OutlierBookError, ValueError):
    pass


class DataNotFoundError(OutlierBookError, FileNotFoundError):
    pass


class MalformedDataError(OutlierBookError, ValueError):
    pass


class ModelNotAvailableError(OutlierBookError, OSError):
    pass


class ConfigError(OutlierBookError, ValueError):
    """Unknown profile, parameter, chapter, node name, bit-width and the like."""
