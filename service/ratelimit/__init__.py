"""Rate limiting: token-bucket maths (bucket.py) and the backends that keep buckets.

The relay only sees `Limiter.acquire(key, route, limit) -> Decision`; which backend answers is
decided once per worker in `create_limiter`.
"""

from .backends import Limiter, create_limiter
from .bucket import Decision, Limit

__all__ = ["Decision", "Limit", "Limiter", "create_limiter"]
