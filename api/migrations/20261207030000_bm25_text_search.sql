-- Full-text ranking with BM25 (pg_textsearch, #20), replacing ts_rank.
--
-- ts_rank scored every passage holding any query word (8,000 of 100,000 for the
-- benchmark's query) before the top 20 could be taken, and weighed a rare word no
-- more than a common one. A bm25 index ranks with inverse document frequency and
-- serves the top k through Block-Max WAND without scoring every match.
--
-- One index over `search_text`, the text the API has already normalised (Arabic alef
-- forms, taa marbuta, diacritics, tatweel, the article and prepositions stripped; French
-- and English accents and case folded), with the `simple` configuration: no stemming
-- and no stop words, so Arabic, French and English passages share one vocabulary and
-- the query's terms (normalised the same way, stop words dropped by the API) match
-- exactly what the index holds. Per-language configurations would need the passage's
-- language at query time, and PostgreSQL has no Arabic stemmer.
--
-- One index for the whole table, not one per knowledge base: pg_textsearch 1.0.0 (the
-- version the engine ships) ignores a partial index's WHERE clause and indexes every
-- row (partial and expression indexes came in 1.1.0). Its corpus statistics (the
-- number of passages, their mean length, each term's document frequency) are
-- therefore the whole table's, across knowledge bases and tenants. They weigh terms;
-- they never let a row of another tenant or knowledge base into the results.
--
-- pg_textsearch must be preloaded (shared_preload_libraries = 'pg_textsearch'): the
-- engines and the image start PostgreSQL so.
CREATE EXTENSION IF NOT EXISTS pg_textsearch;

CREATE INDEX IF NOT EXISTS chunks_bm25 ON chunks USING bm25 (search_text)
    WITH (text_config = 'simple');

-- Runs as the tables' owner, like search_chunks_text (see 20261126000005): under
-- row-level security the planner evaluates the policy before any non-leakproof
-- operator, and `<@>` is not leakproof. It applies the same isolation the policy
-- would: only the current tenant's rows of knowledge base `kb`, and nothing when no
-- tenant is set (current_tenant_id() is NULL, and `= NULL` matches no row).
--
-- `terms` are the query's words, already normalised by the API, separated by spaces.
--
-- Exact within the knowledge base, in two steps:
-- 1. The BM25 index scan, filtered by tenant, knowledge base, documents and language.
--    pg_textsearch's scan re-runs its top-k with a doubled limit when the filter has
--    removed too many rows, until it has max_results or no more matches (or it reaches
--    its cap of 100,000 matches).
-- 2. When that gives fewer than max_results rows (a small knowledge base beside a large
--    one that holds the same words, or no more matches at all), the knowledge base's
--    matching rows are found through the GIN index on `tsv` and all scored with the
--    same BM25 statistics. It is cheap exactly when step 1 came up short: the knowledge
--    base holds few matches.
--
-- Rows scoring 0 hold none of the words and are never returned.
CREATE FUNCTION search_chunks_bm25(
    kb uuid, terms text, max_results integer, only_documents uuid[], only_language text)
    RETURNS TABLE (id uuid)
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = public
    AS $$
    DECLARE
        query bm25query := to_bm25query(terms, 'chunks_bm25');
        words tsquery := to_tsquery('simple', array_to_string(regexp_split_to_array(btrim(terms), '\s+'), ' | '));
        tenant uuid := current_tenant_id();
        found_ids uuid[];
    BEGIN
        IF tenant IS NULL OR max_results < 1 OR btrim(terms) = '' THEN
            RETURN;
        END IF;
        SELECT array_agg(ranked.id ORDER BY ranked.score, ranked.id) INTO found_ids
        FROM (
            SELECT c.id, c.search_text <@> query AS score
            FROM chunks c
            WHERE c.tenant_id = tenant AND c.knowledge_base_id = kb
              AND (only_documents IS NULL OR c.document_id = ANY (only_documents))
              AND (only_language IS NULL OR c.language = only_language)
            ORDER BY c.search_text <@> query
            LIMIT max_results
        ) ranked
        WHERE ranked.score < 0;
        IF coalesce(array_length(found_ids, 1), 0) >= max_results THEN
            RETURN QUERY SELECT unnest(found_ids);
            RETURN;
        END IF;
        RETURN QUERY
            SELECT ranked.id FROM (
                SELECT c.id, c.search_text <@> query AS score
                FROM chunks c
                WHERE c.tenant_id = tenant AND c.knowledge_base_id = kb
                  AND c.tsv @@ words
                  AND (only_documents IS NULL OR c.document_id = ANY (only_documents))
                  AND (only_language IS NULL OR c.language = only_language)
                OFFSET 0 -- scored here, not through the BM25 index scan
            ) ranked
            WHERE ranked.score < 0
            ORDER BY ranked.score, ranked.id
            LIMIT max_results;
    END
    $$;

REVOKE ALL ON FUNCTION search_chunks_bm25(uuid, text, integer, uuid[], text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION search_chunks_bm25(uuid, text, integer, uuid[], text) TO iafactory_app;
