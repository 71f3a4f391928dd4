"""Errors caused by what the user gave (data, config): shown as one line, never a traceback."""


class IZFError(ValueError):
    """Bad input; the message says what was expected and what was found."""


class DatasetError(IZFError):
    """Bad or missing benchmark data: the message names the file, the key and what was expected."""


class ConfigError(IZFError):
    """A config value the framework cannot use: the message names the key."""
