"""Who may do what with threads: tenants, trust roots, scoped cache keys.

- Every thread belongs to the tenant of the principal that created it (a
  child, to its parent's). A call about another tenant's thread is answered
  as if the thread did not exist (NOT_FOUND), so existence does not leak.
- StartThread may work only in folders under the caller's trust roots (the
  principal's own, else the `trust_roots` setting). Without authentication
  (a service on loopback) the one local caller may work anywhere unless
  `trust_roots` says otherwise; with it, a principal without roots may not
  start threads.
- The key a model request carries is scoped to the tenant: its first 12 hex
  digits of SHA-256 of the tenant, then the thread's key. Providers cache per
  key, so two tenants never share a cache entry, even for the same prompt,
  while a tenant's forks still hit their parent's (their keys are equal).
  The scoped key stays within the 64 characters providers accept.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from spindle.auth import LOCAL, Principal

__all__ = ["LOCAL", "Principal", "model_cache_key", "trust_roots"]


def trust_roots(caller: Principal, configured: tuple[Path, ...]) -> tuple[Path, ...] | None:
    """The folders `caller` may start threads in; None means anywhere."""
    if caller.trust_roots:
        return caller.trust_roots
    if configured:
        return configured
    return None if caller is LOCAL else ()


def model_cache_key(tenant: str, key: str) -> str:
    """The prompt_cache_key sent for a thread of `tenant` whose key is `key`."""
    if not tenant:
        return key
    return f"{hashlib.sha256(tenant.encode()).hexdigest()[:12]}:{key}"
