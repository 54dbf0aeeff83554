"""Exception types of fedpress.

Every malformed, truncated, oversized or corrupted input to a decoder ends in
:class:`FormatError`; mirrored codec state that does not match the state a
frame was encoded against ends in :class:`StateDesyncError`.
"""

from __future__ import annotations


class FedpressError(Exception):
    """Base class of every error raised on purpose by fedpress."""


class FormatError(FedpressError, ValueError):
    """A byte string is not a valid fedpress frame (or payload).

    Raised for bad magic, unknown versions, truncated or trailing bytes,
    checksum mismatches, declared sizes over the configured caps, and payloads
    that a codec cannot decode. Never leaves a partially decoded result.
    """


class StateDesyncError(FedpressError, RuntimeError):
    """The decoder's mirrored state differs from the state the encoder used."""


class ReferenceMismatchError(StateDesyncError):
    """A tensor was coded against a reference the decoder does not hold (another
    model, or none)."""


class MissingDependencyError(FedpressError, ImportError):
    """An optional back end library is not installed.

    The message names the package to install.
    """


class ConfigError(FedpressError, ValueError):
    """A codec, plan or bound was configured with invalid values."""
