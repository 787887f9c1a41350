"""The database schema, as an ordered list of migrations both backends apply.

A database records how many of them it has; opening it applies the rest,
each in its own transaction, in order. Migrations only ever add: a released
one is never edited, so every database reaches the same schema whatever
version it started from. The SQL keeps to what SQLite and PostgreSQL share.
"""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    # 1: threads, fork segments, turns and items, as the first release made them.
    """
    CREATE TABLE IF NOT EXISTS threads (
        id TEXT PRIMARY KEY,
        parent_id TEXT REFERENCES threads(id),
        origin TEXT NOT NULL,
        session_origin TEXT NOT NULL,
        depth INTEGER NOT NULL,
        agent_nickname TEXT NOT NULL,
        agent_role TEXT NOT NULL,
        sub_agent_kind TEXT NOT NULL,
        parent_spawn_call_id TEXT NOT NULL,
        inherited_prompt_cache_key TEXT,
        window_generation BIGINT NOT NULL,
        cwd TEXT NOT NULL,
        model TEXT NOT NULL,
        instructions TEXT NOT NULL,
        archived INTEGER NOT NULL,
        trust_project_path TEXT,
        trust_trusted INTEGER,
        trust_source TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX IF NOT EXISTS threads_by_creation ON threads (created_at, id);
    CREATE INDEX IF NOT EXISTS threads_by_parent ON threads (parent_id, created_at, id);
    CREATE TABLE IF NOT EXISTS segments (
        thread_id TEXT NOT NULL REFERENCES threads(id),
        position INTEGER NOT NULL,
        source_thread_id TEXT NOT NULL REFERENCES threads(id),
        from_seq BIGINT NOT NULL,
        to_seq BIGINT NOT NULL,
        PRIMARY KEY (thread_id, position)
    );
    CREATE TABLE IF NOT EXISTS turns (
        id TEXT PRIMARY KEY,
        thread_id TEXT NOT NULL REFERENCES threads(id),
        status TEXT NOT NULL,
        first_seq BIGINT NOT NULL,
        input_tokens BIGINT NOT NULL,
        cached_input_tokens BIGINT NOT NULL,
        output_tokens BIGINT NOT NULL,
        error_code TEXT,
        error_message TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        completed_at DOUBLE PRECISION
    );
    CREATE INDEX IF NOT EXISTS turns_by_thread ON turns (thread_id, first_seq);
    CREATE INDEX IF NOT EXISTS turns_by_status ON turns (status);
    CREATE TABLE IF NOT EXISTS items (
        thread_id TEXT NOT NULL REFERENCES threads(id),
        seq BIGINT NOT NULL,
        turn_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        inheritable INTEGER NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (thread_id, seq)
    );
    CREATE INDEX IF NOT EXISTS items_inheritable ON items (thread_id, inheritable, seq);
    """,
    # 2: replicas. Each thread counts its own items (the next seq) so that an
    # append locks the thread's row; the database allows one running turn per
    # thread; a running turn names its owner, whose heartbeat is its lease,
    # and carries an interrupt asked of it by another replica.
    """
    ALTER TABLE threads ADD COLUMN item_count BIGINT NOT NULL DEFAULT 0;
    UPDATE threads SET item_count = COALESCE(
        (SELECT MAX(seq) + 1 FROM items WHERE items.thread_id = threads.id), 0);
    ALTER TABLE turns ADD COLUMN owner TEXT NOT NULL DEFAULT '';
    ALTER TABLE turns ADD COLUMN interrupt_reason TEXT;
    CREATE UNIQUE INDEX IF NOT EXISTS one_running_turn ON turns (thread_id)
        WHERE status = 'running';
    CREATE INDEX IF NOT EXISTS running_turns_by_owner ON turns (owner)
        WHERE status = 'running';
    CREATE TABLE IF NOT EXISTS replicas (
        id TEXT PRIMARY KEY,
        heartbeat_at DOUBLE PRECISION NOT NULL
    );
    """,
    # 3: tenants. A thread belongs to its creator's tenant; listings are per tenant.
    """
    ALTER TABLE threads ADD COLUMN tenant TEXT NOT NULL DEFAULT '';
    CREATE INDEX IF NOT EXISTS threads_by_tenant ON threads (tenant, created_at, id);
    CREATE INDEX IF NOT EXISTS threads_by_tenant_parent
        ON threads (tenant, parent_id, created_at, id);
    """,
    # 4: the v1 API for clients on unreliable networks. Items carry their
    # creation time; a turn knows where its items end, its error's details,
    # and its events (so a client can follow it again); request ids make
    # retries safe; a spawn call makes one child; threads have labels, can
    # be deleted (a thread whose items forks still read stays as a tombstone)
    # and listed by update time.
    """
    ALTER TABLE items ADD COLUMN created_at DOUBLE PRECISION NOT NULL DEFAULT 0;
    UPDATE items SET created_at = COALESCE(
        (SELECT turns.created_at FROM turns WHERE turns.id = items.turn_id), 0);
    ALTER TABLE turns ADD COLUMN end_seq BIGINT;
    UPDATE turns SET end_seq = COALESCE(
        (SELECT MIN(later.first_seq) FROM turns later
         WHERE later.thread_id = turns.thread_id AND later.first_seq > turns.first_seq),
        (SELECT threads.item_count FROM threads WHERE threads.id = turns.thread_id))
        WHERE status <> 'running';
    ALTER TABLE turns ADD COLUMN error_reason TEXT;
    ALTER TABLE turns ADD COLUMN error_metadata TEXT;
    ALTER TABLE turns ADD COLUMN error_retry_after DOUBLE PRECISION;
    CREATE TABLE IF NOT EXISTS turn_events (
        turn_id TEXT NOT NULL REFERENCES turns(id),
        seq BIGINT NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (turn_id, seq)
    );
    CREATE TABLE IF NOT EXISTS requests (
        tenant TEXT NOT NULL,
        request_id TEXT NOT NULL,
        method TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        thread_id TEXT,
        turn_id TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (tenant, request_id)
    );
    CREATE INDEX IF NOT EXISTS requests_by_age ON requests (created_at);
    ALTER TABLE threads ADD COLUMN spawn_fingerprint TEXT NOT NULL DEFAULT '';
    CREATE INDEX IF NOT EXISTS threads_by_spawn_call
        ON threads (parent_id, parent_spawn_call_id);
    CREATE TABLE IF NOT EXISTS thread_labels (
        thread_id TEXT NOT NULL REFERENCES threads(id),
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (thread_id, key)
    );
    CREATE INDEX IF NOT EXISTS labels_by_pair ON thread_labels (key, value, thread_id);
    ALTER TABLE threads ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX IF NOT EXISTS threads_by_tenant_update ON threads (tenant, updated_at, id);
    CREATE INDEX IF NOT EXISTS segments_by_source ON segments (source_thread_id, from_seq);
    """,
)

VERSION = len(MIGRATIONS)


def statements(migration: str) -> list[str]:
    """A migration's statements, one by one (no statement holds a `;`)."""
    return [s.strip() for s in migration.split(";") if s.strip()]
