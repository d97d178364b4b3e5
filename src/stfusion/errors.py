"""Exceptions. Every message says what is wrong and how to fix it."""


class StfusionError(Exception):
    """Base class of every error stfusion raises on purpose."""


class SectionError(StfusionError, ValueError):
    """A section (AnnData) does not follow the stfusion schema."""


class SchemaError(SectionError):
    """A required AnnData key is missing or malformed."""


class ImageError(SectionError):
    """The section's image is missing, unreadable or corrupt."""


class SpotsOutOfBoundsError(SectionError):
    """Spot centres fall outside the image."""


class JoinError(SectionError):
    """Counts and spot tables do not join on spot ids."""


class DuplicateGenesError(SectionError):
    """Gene names are not unique."""


class CountsError(SectionError):
    """Counts are negative, non-integer or NaN where raw counts are required."""


class EmptySectionError(SectionError):
    """The section has no spots or no genes."""


class ScaleError(SectionError):
    """The physical scale (µm per pixel) cannot be determined."""


class InputFileError(StfusionError, FileNotFoundError):
    """An input file or folder is missing or has the wrong layout."""


class OptionalDependencyError(StfusionError, ImportError):
    """A method needs an optional package that is not installed (the message names the extra to install)."""


class ConfigError(StfusionError, ValueError):
    """A benchmark or run configuration is invalid (the message names the key and the fix)."""
