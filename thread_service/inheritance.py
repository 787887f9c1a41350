"""What a child thread inherits from its parent, and the fork history rule.

| how the thread came to be | history it starts with        | prompt_cache_key          |
|---------------------------|-------------------------------|---------------------------|
| start                     | empty                         | its own id                |
| spawn (fresh)             | empty                         | its own id                |
| fork                      | the parent's, sanitized       | the parent's effective key|
| resume                    | its persisted history         | its own id                |

The inherited part is one small value, `InheritedThreadState`, built when a
child is created and carried to where model requests are built. Plain
spawns and resumes get an empty one, so their key is their own id.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class InheritedThreadState:
    """State a forked child takes from its parent. Empty means: nothing."""

    prompt_cache_key: str | None = None


EMPTY = InheritedThreadState()


def for_fork(parent_prompt_cache_key: str) -> InheritedThreadState:
    """A fork carries its parent's *effective* key, so a fork of a fork carries the root's."""
    return InheritedThreadState(prompt_cache_key=parent_prompt_cache_key)
