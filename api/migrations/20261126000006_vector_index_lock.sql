-- A knowledge base's HNSW index is created by its first ingestion, and ingestion
-- workers run in parallel: two of them creating it at once both passed the
-- IF NOT EXISTS check, and the second failed its document with a duplicate key in
-- pg_class. A transaction-scoped advisory lock on the index name makes the second wait
-- for the first to commit, after which IF NOT EXISTS sees the index.
CREATE OR REPLACE FUNCTION ensure_vector_index(kb uuid, dimensions integer) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public
    AS $$
    DECLARE
        index_name text := 'chunks_hnsw_' || replace(kb::text, '-', '');
    BEGIN
        IF dimensions < 1 OR dimensions > 2000 THEN
            RAISE EXCEPTION 'pgvector HNSW indexes take 1 to 2000 dimensions, not %', dimensions;
        END IF;
        IF NOT EXISTS (SELECT 1 FROM knowledge_bases WHERE id = kb AND tenant_id = current_tenant_id()) THEN
            RAISE EXCEPTION 'no knowledge base % in the current tenant', kb;
        END IF;
        PERFORM pg_advisory_xact_lock(hashtextextended(index_name, 0));
        EXECUTE format(
            'CREATE INDEX IF NOT EXISTS %I ON chunks USING hnsw ((embedding::vector(%s)) vector_cosine_ops) WHERE knowledge_base_id = %L',
            index_name, dimensions, kb);
    END
    $$;
