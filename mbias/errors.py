"""User-facing errors: one line that says what is wrong and what to do; the CLI prints them without a traceback."""


class MbiasError(Exception):
    """An error caused by what the user gave us (a path, a name, a file's content), not by a bug in mbias."""


class ModelLoadError(MbiasError):
    """The model reference could not be resolved or loaded, or the model is not a supported image-text model."""


class DataError(MbiasError):
    """A dataset file, record or image is malformed; the message names the file and line."""


class ConfigError(MbiasError):
    """A config value or file is invalid."""


class Interrupted(MbiasError):
    """A run stopped on a signal after saving what it needs to resume; the message says how (the same command)."""

    exit_code = 143  # 128 + SIGTERM, what a scheduler expects of a process it stopped
