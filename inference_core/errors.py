"""Typed errors of the inference core. Each message says what was wrong and what to do."""

from __future__ import annotations


class InferenceError(Exception):
    """Base class of the inference core's errors."""


class TemplateError(InferenceError):
    """A sentence-template file cannot be parsed (the message names file and line)."""


class AudioFormatError(InferenceError):
    """An audio file cannot be decoded: empty, truncated, corrupt, or not audio."""


class ModelLoadError(InferenceError):
    """A model or model bundle is missing or cannot be loaded."""
