"""The project's own error type: a user's mistake, reported as one line that says what to do."""


class UserError(ValueError):
    """Bad input from the user (arguments, arrays, files). The CLI prints it as one line and exits with status 2."""
