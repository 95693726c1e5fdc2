"""Exceptions that carry a user-facing message (file, line, what was expected)."""


class KdflowError(Exception):
    """Base class: the message is shown to the user as is, without a traceback."""


class ConfigError(KdflowError):
    """The experiment configuration is invalid."""


class DataError(KdflowError):
    """An input file is malformed; the message names file and line."""


class AssetError(KdflowError):
    """An embedded asset or a model/corpus source cannot be resolved."""
