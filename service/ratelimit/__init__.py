"""Rate limiting: token-bucket maths (bucket.py) and the stores that keep buckets.

The relay only sees `Limiter.acquire(key, route, limit) -> Decision`; which store answers
(shared memory for all workers of an instance, or Redis for all replicas) is decided once per
worker in `create_limiter`. `shared.create_table` is called by the CLI in the primary process.
Token limits and budgets (SPEC §13) are in `tokens.py`: the same stores, their own table or keys.
"""

from .backends import Limiter, check_backend, create_limiter
from .bucket import Decision, Limit

__all__ = ["Decision", "Limit", "Limiter", "check_backend", "create_limiter"]
