"""HTTP routes: ops (health, ready, metrics, models) and the proxied LLM routes."""

from .ops import bp as ops_bp
from .proxy import bp as proxy_bp

__all__ = ["ops_bp", "proxy_bp"]
