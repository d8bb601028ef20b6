"""Profiles: the model, loading and validation, hot reload, the shipped files and their schema."""

from .loader import (
    ConfigError,
    LoadedConfig,
    available_profiles,
    find_profile,
    load_file,
    profile_schema,
    routing_schema,
)
from .model import PROXY_ROUTES, Profile, ResolvedEndpoint
from .reload import ConfigHolder

__all__ = [
    "PROXY_ROUTES",
    "ConfigError",
    "ConfigHolder",
    "LoadedConfig",
    "Profile",
    "ResolvedEndpoint",
    "available_profiles",
    "find_profile",
    "load_file",
    "profile_schema",
    "routing_schema",
]
