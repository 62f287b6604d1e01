"""Problems with the user's input, reported as one line and a non-zero exit code."""

import re


class UserError(Exception):
    """A problem with the user's input; reported as one line."""


def first_line(error):
    """The message of an error in one line; for errors Keras re-raises from a layer's call, the original one."""
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(error)).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Exception encountered when calling"):
        return lines[1]
    return lines[0] if lines else type(error).__name__
