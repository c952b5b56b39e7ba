"""User-facing errors.

A :class:`SlimedgeError` carries one line that names the file or tensor at fault and what to do
about it. The CLI prints it without a traceback; library users catch it like any exception.
"""


class SlimedgeError(Exception):
    """Bad input or an impossible request, explained in one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always one line
