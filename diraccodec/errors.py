"""Errors a user can cause. The CLI prints each as one line and exits with status 2."""


class DiracError(Exception):
    """Base of every error caused by input, files or options rather than by a bug."""


class NotADrcFileError(DiracError):
    pass


class CorruptFileError(DiracError):
    pass


class TruncatedFileError(CorruptFileError):
    pass


class UnsupportedVersionError(DiracError):
    pass


class WrongWeightsError(DiracError):
    pass


class ImageReadError(DiracError):
    pass


class OutputWriteError(DiracError):
    pass


class LimitExceededError(DiracError):
    pass


class InvalidOptionError(DiracError):
    pass
