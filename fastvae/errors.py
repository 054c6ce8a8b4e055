"""The project's own error type: a user's mistake, reported as one line that says what to do."""


class UserError(ValueError):
    """Bad input from the user (arguments, arrays, files). The CLI prints it as one line and exits with status 2."""


class TrainingDiverged(UserError):
    """The loss or the parameters became NaN or Inf. Nothing non-finite is ever saved; the CLI exits with status 3."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C arrived and training stopped cleanly after the step in progress: the model is consistent and can be
    saved and resumed (a second Ctrl-C interrupts at once, and then it may not be)."""
