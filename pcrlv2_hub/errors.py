"""Every failure a user can cause, as one family of exceptions.

All of them derive from :class:`PCRLv2HubError`, so ``except PCRLv2HubError`` catches
anything this package raises on purpose; each message says what to do next.
Where a builtin exception is the natural category (a missing file, a bad value), the
class also derives from it so that generic handlers keep working.
"""

from __future__ import annotations


class PCRLv2HubError(Exception):
    """Base class of every error raised on purpose by pcrlv2_hub."""


class UnknownModelError(PCRLv2HubError, KeyError):
    """A model or architecture name that the zoo does not know."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ManifestError(PCRLv2HubError, ValueError):
    """The weights manifest is malformed or an entry breaks the schema."""


class WeightsNotPublishedError(PCRLv2HubError):
    """The zoo entry exists but its weights are not downloadable yet."""


class DownloadError(PCRLv2HubError, OSError):
    """A file could not be fetched (404, missing revision, network failure)."""


class OfflineError(DownloadError):
    """Offline mode is on and the file is not in the local cache."""


class ChecksumMismatchError(PCRLv2HubError):
    """A weights file does not have the sha256 the manifest promises."""


class WeightsFormatError(PCRLv2HubError, ValueError):
    """A weights file is not what it should be: wrong type, truncated or corrupt."""


class IncompatibleWeightsError(PCRLv2HubError):
    """Weights do not fit the network: missing, unexpected or mis-shaped tensors."""


class InvalidInputError(PCRLv2HubError, ValueError):
    """An argument or tensor the network or a command cannot accept."""


class DataError(PCRLv2HubError):
    """Training or evaluation data that cannot be used (empty, unreadable, malformed)."""


class CheckpointError(PCRLv2HubError):
    """A training checkpoint that is missing, unreadable or from another run."""


class CheckpointWarning(UserWarning):
    """The newest checkpoint was damaged; the run resumes from the one before it."""


class TrainingDivergedError(PCRLv2HubError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class DataWarning(UserWarning):
    """Some training data was skipped (unreadable, truncated) or is used with a caveat (padded)."""


class UnverifiedWeightsWarning(UserWarning):
    """A weights file records no tensor digest, so its tensors could not be checked."""


class VerificationError(PCRLv2HubError):
    """A weights file loads but does not compute the golden output recorded for it."""


class UploadError(PCRLv2HubError, OSError):
    """Files could not be pushed to the Hugging Face Hub (no token, refused, network)."""
