"""Errors a user can fix. The CLI prints them as one line, never a traceback."""


class ToolRLError(Exception):
    """Base class for errors caused by bad input (config, data, model name, weights)."""


class ConfigError(ToolRLError, ValueError):
    """A config key or value is wrong; the message names the key and the fix."""


class ModelLoadError(ToolRLError):
    """A model name, file or weight tensor could not be resolved or does not fit the config."""


class DataError(ToolRLError):
    """A data file is missing or unreadable."""


class TrainingError(ToolRLError):
    """Training cannot go on (e.g. a non-finite loss); the message says what was kept and why."""
