"""Errors a user can cause. The CLI prints them as one line and exits with status 2."""


class PosenfsError(Exception):
    """Base of every user-facing error: the message says what is wrong and where."""


class SpecError(PosenfsError):
    """A spec, search space, grouping or genotype file is missing, malformed or inconsistent."""


class InputError(PosenfsError):
    """A data, prediction, checkpoint or weights file cannot be used as given."""
