"""The one exception hierarchy of raiiaf: every failure a user can meet is a RaiiafError."""


class RaiiafError(Exception):
    """Root of every error raised by raiiaf on purpose."""


class CorruptFileError(RaiiafError):
    """A file is damaged or is not a .raiiaf file: bad magic, checksum, truncation, inconsistent sizes."""


class NoArtifactError(CorruptFileError):
    """A PNG that holds no raiiaf chunk: an image, not one made by `raiiaf export`."""


class UnsupportedVersionError(RaiiafError):
    """A file was written by a newer major version of the format than this reader knows."""


class MetadataError(RaiiafError):
    """Metadata given to the writer breaks the schema (the message names the field)."""


class TensorError(RaiiafError):
    """A tensor cannot be stored or returned as asked (dtype, rank, framework)."""


class RecipeMismatchError(RaiiafError):
    """Noise stored as a recipe did not draw to its sha256: a torch that draws differently (the message names
    the recorded and the running version), or an altered recipe. The rest of the file stays readable."""


class LimitExceededError(CorruptFileError):
    """A file asks for more than a configured limit allows (the message names the limit)."""


class MissingDependencyError(RaiiafError):
    """An optional dependency needed for this file is not installed (the message names it)."""


class WriteError(RaiiafError):
    """A file could not be written; nothing partial is left under the final name."""


class TargetExistsError(WriteError):
    """An exclusive write found a file already under the final name."""


class ReadError(RaiiafError):
    """A file could not be read at all (missing, unreadable); the message names it."""
