-- The RAG pipeline: searchable text, the uploaded files, the ingestion queue, the
-- embedding cache, and per-knowledge-base vector indexes.

-- What full-text search matches: the chunk normalised for search (Arabic diacritics,
-- letter variants and articles, Latin accents and case), written by the API.
ALTER TABLE chunks ADD COLUMN search_text text NOT NULL DEFAULT '';
ALTER TABLE chunks ADD COLUMN tsv tsvector GENERATED ALWAYS AS (to_tsvector('simple', search_text)) STORED;
CREATE INDEX chunks_tsv_idx ON chunks USING gin (tsv);

-- The uploaded file, kept so that ingestion survives a crash and can be re-run.
CREATE TABLE document_blobs (
    document_id uuid PRIMARY KEY REFERENCES documents (id) ON DELETE CASCADE,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    filename    text NOT NULL,
    content     bytea NOT NULL
);

CREATE TABLE ingestion_jobs (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    document_id   uuid NOT NULL UNIQUE REFERENCES documents (id) ON DELETE CASCADE,
    state         text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running', 'done', 'failed')),
    attempts      integer NOT NULL DEFAULT 0,
    run_after     timestamptz NOT NULL DEFAULT now(),
    -- A running job whose lease expired (its worker crashed) is picked up again.
    leased_until  timestamptz,
    last_error    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ingestion_jobs_ready_idx ON ingestion_jobs (run_after) WHERE state IN ('queued', 'running');

-- Vectors of texts already embedded, by model and content hash, per tenant.
CREATE TABLE embedding_cache (
    tenant_id    uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    model        text NOT NULL,
    content_hash bytea NOT NULL,
    embedding    vector NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, model, content_hash)
);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['document_blobs', 'ingestion_jobs', 'embedding_cache']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I USING (tenant_id = current_tenant_id()) WITH CHECK (tenant_id = current_tenant_id())',
            t);
    END LOOP;
END
$$;

-- The ingestion workers serve every tenant of this API: claiming the next job is the
-- one cross-tenant step, and it returns only ids; the work itself runs under the
-- job's tenant context like a request.
CREATE FUNCTION claim_ingestion_job(lease_seconds integer)
    RETURNS TABLE (job_id uuid, tenant_id uuid, document_id uuid, attempts integer)
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public
    AS $$
        UPDATE ingestion_jobs j
        SET state = 'running', attempts = j.attempts + 1,
            leased_until = now() + make_interval(secs => lease_seconds), updated_at = now()
        WHERE j.id = (
            SELECT id FROM ingestion_jobs
            WHERE (state = 'queued' AND run_after <= now())
               OR (state = 'running' AND leased_until < now())
            ORDER BY run_after
            FOR UPDATE SKIP LOCKED
            LIMIT 1)
        RETURNING j.id, j.tenant_id, j.document_id, j.attempts
    $$;

CREATE FUNCTION ingestion_queue_depth() RETURNS bigint
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public
    AS $$ SELECT count(*) FROM ingestion_jobs WHERE state IN ('queued', 'running') $$;

-- pgvector indexes need a fixed dimension, and knowledge bases differ: each gets a
-- partial HNSW index on its own rows. Creating an index needs the table's owner, so
-- this runs as the owner, for a knowledge base of the caller's tenant only.
CREATE FUNCTION ensure_vector_index(kb uuid, dimensions integer) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public
    AS $$
    BEGIN
        IF dimensions < 1 OR dimensions > 2000 THEN
            RAISE EXCEPTION 'pgvector HNSW indexes take 1 to 2000 dimensions, not %', dimensions;
        END IF;
        IF NOT EXISTS (SELECT 1 FROM knowledge_bases WHERE id = kb AND tenant_id = current_tenant_id()) THEN
            RAISE EXCEPTION 'no knowledge base % in the current tenant', kb;
        END IF;
        EXECUTE format(
            'CREATE INDEX IF NOT EXISTS %I ON chunks USING hnsw ((embedding::vector(%s)) vector_cosine_ops) WHERE knowledge_base_id = %L',
            'chunks_hnsw_' || replace(kb::text, '-', ''), dimensions, kb);
    END
    $$;

CREATE FUNCTION drop_vector_index(kb uuid) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public
    AS $$
    BEGIN
        IF EXISTS (SELECT 1 FROM knowledge_bases WHERE id = kb AND tenant_id <> current_tenant_id()) THEN
            RAISE EXCEPTION 'no knowledge base % in the current tenant', kb;
        END IF;
        EXECUTE format('DROP INDEX IF EXISTS %I', 'chunks_hnsw_' || replace(kb::text, '-', ''));
    END
    $$;

REVOKE ALL ON FUNCTION claim_ingestion_job(integer), ingestion_queue_depth(),
    ensure_vector_index(uuid, integer), drop_vector_index(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION claim_ingestion_job(integer), ingestion_queue_depth(),
    ensure_vector_index(uuid, integer), drop_vector_index(uuid) TO iafactory_app;
