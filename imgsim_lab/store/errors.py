"""Errors raised by the store. Messages name the store by its redacted URL, never a password."""

from __future__ import annotations


class StoreError(RuntimeError):
    """Base class of every store error."""


class InvalidURLError(StoreError, ValueError):
    """The store URL cannot be parsed or names an unknown backend."""


class StoreConnectionError(StoreError):
    """The server refused or dropped the connection (after bounded retries)."""


class StoreAuthError(StoreConnectionError):
    """The server rejected the credentials."""


class StoreLockedError(StoreError):
    """The embedded RocksDB store is held for writing by another process."""


class StoreNotFoundError(StoreError):
    """A read-only command named a store that does not exist (nothing is created)."""


class ReadOnlyStoreError(StoreError):
    """A write was attempted on a store opened read-only."""


class DimensionMismatchError(StoreError, ValueError):
    """A vector does not have the dimension recorded for its model."""


class ModelMismatchError(StoreError, ValueError):
    """A model is registered with another dimension or version than the one given."""


class UnknownModelError(StoreError, KeyError):
    """No embedding of this model has been registered in the namespace."""


class CorruptDataError(StoreError):
    """Something read back from the store is malformed (bad field, wrong vector length)."""
