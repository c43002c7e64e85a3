"""The one exception type for mistakes a user can fix (bad flag, bad config, missing data).

Entry points catch it, print its one-line message and exit with status 2 (no traceback).
"""


class UserError(Exception):
    """A problem with the user's input or environment, reported as one line, exit status 2."""


class RunAlreadyFinished(Exception):
    """--skip_finished found a finished run in the run folder: nothing to do (exit status 0)."""
