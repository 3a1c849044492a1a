"""Shared state behind one small protocol: in-process memory (embedded) or Redis (shared by replicas)."""

from floodwall.state.memory import MemoryStore
from floodwall.state.store import Store


def open_store(url: str) -> Store:
    """memory:// (this process only) or redis://host:port/db (shared by every replica)."""
    if url.startswith("memory://"):
        return MemoryStore()
    from floodwall.state.redis import RedisStore

    return RedisStore(url)
