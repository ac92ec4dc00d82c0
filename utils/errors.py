"""Exceptions shared across packages, kept in the lowest layer so that raising one never imports a higher one."""

from __future__ import annotations


class ConfigError(ValueError):
    """An invalid configuration value; the message names the key."""
