"""Pruning methods, one file each, registered by name (see `base.make_method`)."""

from prunelab.methods.base import list_methods, make_method  # noqa: F401
