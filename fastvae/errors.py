"""The project's own error type: a user's mistake, reported as one line that says what to do."""
import signal


class UserError(ValueError):
    """Bad input from the user (arguments, arrays, files). The CLI prints it as one line and exits with status 2."""


class TrainingDiverged(UserError):
    """The loss or the parameters became NaN or Inf. Nothing non-finite is ever saved; the CLI exits with status 3.
    `what`: where and how it diverged (without the advice), `lr`: the learning rate it trained at (None: unknown)."""

    def __init__(self, message: str, what: str | None = None, lr: float | None = None):
        super().__init__(message)
        self.what = message if what is None else what
        self.lr = lr


class StoppedBySignal(KeyboardInterrupt):
    """A signal stopped the work: `signum` (SIGINT, Ctrl-C, or on the command line SIGTERM), `how` it is named in
    the line the command line prints ("Ctrl-C", "SIGTERM"), and `status`, the exit status it gives, 128 + signum
    (130, 143)."""

    def __init__(self, message: str = "", signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = int(signum)

    @property
    def status(self) -> int:
        return 128 + self.signum

    @property
    def how(self) -> str:
        return signal_name(self.signum)


def signal_name(signum: int) -> str:
    """How a stop line names a signal: "Ctrl-C" for SIGINT, else its name ("SIGTERM")."""
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


class TrainingInterrupted(StoppedBySignal):
    """Ctrl-C (or the command line's SIGTERM) arrived and training stopped cleanly after the step in progress: the
    model is consistent and can be saved and resumed (a second Ctrl-C interrupts at once, and then it may not be)."""


def one_line(e: BaseException) -> str:
    """An exception as 'Type: message' on one line, to quote inside a UserError. NumPy's answer to a file that is
    neither a .npy nor a .npz ("contains pickled (object) data ... allow_pickle=") says what it is not, instead of
    sending the reader to unpickling it (a data file must not run code)."""
    if isinstance(e, ValueError) and "allow_pickle" in str(e):
        return "not a NumPy .npy or .npz file, or one holding Python objects, which fastvae never unpickles"
    return " ".join(f"{type(e).__name__}: {e}".split())
