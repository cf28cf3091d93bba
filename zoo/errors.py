"""The one exception family of weightzoo.

Every error a user can cause (a wrong path, a corrupt or unsafe file, a shape or architecture
mismatch, a bad query, ...) is a subclass of :class:`ZooError`, and its message says what was
wrong and what to do about it. Catch ``ZooError`` to handle them all.
"""

from __future__ import annotations


class ZooError(Exception):
    """Base class of every error weightzoo raises on purpose."""


class NotFoundError(ZooError, LookupError):
    """A model, population, architecture, file or folder that does not exist."""


class CorruptFileError(ZooError):
    """A checkpoint, pack or data file that is truncated or does not parse."""


class UnsafeFileError(ZooError):
    """A file whose loading would run code (a pickle that is not weights-only)."""


class MismatchError(ZooError, ValueError):
    """Shapes, dtypes or architectures that do not fit together."""


class DuplicateError(ZooError, ValueError):
    """A name that is already taken (population, architecture, model name, registry entry)."""


class QueryError(ZooError):
    """An SQL query that is invalid or tries to modify the store (the query API is read-only)."""


class IntegrityError(ZooError):
    """The store is inconsistent: a missing pack, a blob whose hash does not match."""


class StorageError(ZooError, OSError):
    """The pack directory cannot be written (disk full, permission denied, ...)."""


class ConfigError(ZooError, ValueError):
    """An invalid recipe, architecture config, option value or unknown registry name."""


class OutputPathError(ConfigError):
    """An output folder weightzoo refuses to write: a zoo, the home or current folder (or an
    ancestor), the filesystem root, or an existing folder weightzoo did not write."""


class DatasetError(ZooError):
    """A data set that cannot be found or read in its expected format."""


__all__ = [
    "ZooError",
    "NotFoundError",
    "CorruptFileError",
    "UnsafeFileError",
    "MismatchError",
    "DuplicateError",
    "QueryError",
    "IntegrityError",
    "StorageError",
    "ConfigError",
    "OutputPathError",
    "DatasetError",
]
