"""The riskscore exception tree. Every error raised on purpose derives from RiskscoreError."""


class RiskscoreError(Exception):
    """Root of all riskscore errors."""


class ConfigurationError(RiskscoreError):
    """Raised when a setting is invalid or missing; the message names the environment variable."""


class CapabilityError(RiskscoreError):
    """Raised when the Redis server lacks a command riskscore needs (Bloom or T-Digest)."""


class ServerError(RiskscoreError):
    """Raised when the embedded server cannot be found, started or stopped."""


class InputFormatError(RiskscoreError):
    """Raised when a file given to a command cannot be read in its stated format."""
