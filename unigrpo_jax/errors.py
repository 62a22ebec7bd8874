"""The error a user's input causes: a config file or field, a flag, a checkpoint or data file
that is missing or inconsistent. Launchers print it as one line without a traceback (a bug
keeps its traceback); every layer of the library raises it, so it sits below all of them."""


class ConfigError(ValueError):
    """A configuration file or field is missing or inconsistent."""


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of ``error``'s message, cut at ``limit`` characters ('' when empty): what a
    one-line message quotes of an error raised by another library."""
    lines = str(error).strip().splitlines()
    return lines[0][:limit] if lines else ''
