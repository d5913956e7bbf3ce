-- Re-embedding a knowledge base whose embedding model changed declaratively (its
-- resource's spec.embedding, registered by the operator or the appliance): the
-- stored `embedding` stays the model of the vectors in `chunks`, which searches keep
-- using, while a worker embeds every chunk again with `pending_embedding` into
-- `chunk_embeddings_next`. When every chunk has its next vector, one transaction
-- copies them into `chunks` and makes the pending model the knowledge base's (see
-- api/src/rag/reembed.rs).
ALTER TABLE knowledge_bases
    ADD COLUMN pending_embedding jsonb,
    -- Chunks with their next vector, of all the knowledge base's chunks.
    ADD COLUMN reembed_done integer NOT NULL DEFAULT 0,
    ADD COLUMN reembed_total integer NOT NULL DEFAULT 0,
    -- Why the last attempt failed (the worker retries), or why re-embedding cannot
    -- happen here (a Qdrant store); NULL when it is going well.
    ADD COLUMN reembed_error text,
    ADD COLUMN reembed_started_at timestamptz,
    -- A worker holds the knowledge base until then; after an error, the next attempt
    -- waits until then.
    ADD COLUMN reembed_leased_until timestamptz;

CREATE INDEX knowledge_bases_pending_embedding_idx ON knowledge_bases (reembed_started_at)
    WHERE pending_embedding IS NOT NULL;

-- The vectors of the pending model, one per chunk, until the switch.
CREATE TABLE chunk_embeddings_next (
    chunk_id          uuid PRIMARY KEY REFERENCES chunks (id) ON DELETE CASCADE,
    tenant_id         uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    knowledge_base_id uuid NOT NULL REFERENCES knowledge_bases (id) ON DELETE CASCADE,
    embedding         vector NOT NULL
);
CREATE INDEX chunk_embeddings_next_kb_idx ON chunk_embeddings_next (knowledge_base_id);
ALTER TABLE chunk_embeddings_next ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON chunk_embeddings_next
    USING (tenant_id = current_tenant_id()) WITH CHECK (tenant_id = current_tenant_id());
GRANT SELECT, INSERT, UPDATE, DELETE ON chunk_embeddings_next TO iafactory_app;

-- The re-embedding workers serve every tenant of this API: finding the next knowledge
-- base to re-embed is the one cross-tenant step, and it returns only ids; the work runs
-- under the knowledge base's tenant context. A knowledge base is held by one worker (of
-- any replica) at a time, through its lease.
CREATE FUNCTION claim_reembedding(lease_seconds integer)
    RETURNS TABLE (tenant_id uuid, knowledge_base_id uuid)
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public
    AS $$
        UPDATE knowledge_bases kb
        SET reembed_leased_until = now() + make_interval(secs => lease_seconds)
        WHERE kb.id = (
            SELECT k.id FROM knowledge_bases k
            WHERE k.pending_embedding IS NOT NULL
              AND (k.reembed_leased_until IS NULL OR k.reembed_leased_until < now())
            ORDER BY k.reembed_started_at NULLS FIRST
            FOR NO KEY UPDATE SKIP LOCKED
            LIMIT 1)
        RETURNING kb.tenant_id, kb.id
    $$;

REVOKE ALL ON FUNCTION claim_reembedding(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION claim_reembedding(integer) TO iafactory_app;
