"""User-facing errors.

Anything a user can cause (a wrong path, an empty folder, a corrupt image, a model folder from another
version) raises :class:`UserInputError` with one line that names the offending value and what to do.
The command-line entry points turn it into that one line on stderr and exit code 2, without a traceback.
"""


class UserInputError(ValueError):
    """A mistake the user can fix. The message is one line naming the offending value and the remedy."""
