"""User-facing errors: the CLI turns these (and only these) into one line on stderr and exit status 2."""


class JaxGPTError(Exception):
    """Base of every error caused by the user's input rather than a bug."""


class UsageError(JaxGPTError, ValueError):
    """Bad argument: empty prompt, unknown dtype, top-k out of range, no such device, ..."""
