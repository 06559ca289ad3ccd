"""The one exception type for mistakes a user can fix.

The CLI prints a UserError as a single line and exits with status 2, without a traceback;
everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user: the message says what is wrong and what to do."""
