"""User-facing errors.

Every failure a user can cause or fix (bad input, missing network, missing token, a file that cannot be read)
is raised as an :class:`UnlearnError` subclass with a message that says what went wrong and what to do.
The CLI and the app show the message; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UnlearnError(Exception):
    """Base class for errors whose message is meant for the user."""


class ModelUnavailableError(UnlearnError):
    """A model or SAE could not be loaded (no network, no token, not enough memory, unknown name)."""


class FeatureListError(UnlearnError):
    """A feature list is malformed or does not fit the model/SAE it is used with."""


class TextSourceError(UnlearnError):
    """A text corpus or probe file could not be found, read or parsed."""


class InputError(UnlearnError):
    """A user-supplied argument (prompt, latent id, option) is invalid."""


class RemoteServiceError(UnlearnError):
    """An online service (Neuronpedia) refused a request, failed, or could not be reached."""


class Stopped(UnlearnError):
    """A long job was stopped on request (its ``should_stop`` said so), between two batches."""
