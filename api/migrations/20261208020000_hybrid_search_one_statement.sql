-- A hybrid search in one statement, one round trip (#20).
--
-- A search used to cost four transactions: the knowledge bases' settings, the vector
-- top k and the BM25 top k (each on its own connection), then the rows' details, each
-- transaction being BEGIN, set_config, the query and COMMIT: sixteen statements and
-- twelve sequential round trips. These two functions serve the same in one statement
-- each, without an explicit transaction: the statement's own transaction carries the
-- settings, which end with it.
--
-- Both run as the caller (SECURITY INVOKER), the API's role: the row-level security
-- policies apply to every row they read, as they did. They set the tenant with
-- set_config(..., true), exactly what the API's tenant transactions do (and nothing the
-- role could not do itself), and only for the statement's transaction: the connection
-- goes back to the pool with no tenant set.

-- The knowledge bases a search names, with their embedding and generation settings.
CREATE FUNCTION searchable_knowledge_bases(tenant uuid, ids uuid[])
    RETURNS TABLE (id uuid, embedding jsonb, generation jsonb)
    LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = public
    AS $$
    BEGIN
        PERFORM set_config('app.current_tenant_id', tenant::text, true);
        RETURN QUERY SELECT kb.id, kb.embedding, kb.generation
            FROM knowledge_bases kb WHERE kb.id = ANY (ids);
    END
    $$;

-- search_chunks_bm25 (20261207030000), faster. That function's index scan took 1 to
-- 1.5 ms at 100,000 chunks where the raw query takes 0.15 ms: plpgsql caches its plan
-- (see below), and it selects each row's score (`search_text <@> query`), which
-- pg_textsearch computes afresh outside the scan, to drop rows scoring 0. Here the
-- scan's rows are checked against the words through `tsv` instead (a scan can return
-- rows holding none of the words once the matches run out: the tests saw it on a
-- small, unmerged index), and its order and LIMIT are the ranking. The second step,
-- when the scan comes up short, is search_chunks_bm25's: every match of the knowledge
-- base (through the GIN index on `tsv`), scored. The same isolation: the current
-- tenant's rows of knowledge base `kb`, nothing when no tenant is set. It runs as the
-- tables' owner for the reason given there (`<@>` is not leakproof: under row-level
-- security its index is unusable).
CREATE FUNCTION search_chunks_bm25_ranked(
    kb uuid, terms text, max_results integer, only_documents uuid[], only_language text)
    RETURNS TABLE (id uuid)
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = public SET plan_cache_mode = auto
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
        -- Planned on every call (EXECUTE), the limit at the top of the plan, not in a
        -- subquery expression: pg_textsearch 1.0.0 gives its scan the top k at
        -- planning, from a LIMIT it sees there. A cached plan (a prepared statement,
        -- or plpgsql's own statements) or an `ARRAY(SELECT ... LIMIT k)` served the
        -- same top 20 seven to ten times slower (1.4 ms instead of 0.15 ms at 100,000
        -- chunks).
        EXECUTE format(
            'SELECT array_agg(s.id ORDER BY s.n) FROM (
                 SELECT x.id, row_number() OVER () AS n FROM (
                     SELECT c.id FROM chunks c
                     WHERE c.tenant_id = %L AND c.knowledge_base_id = %L
                       AND c.tsv @@ $3
                       AND ($1::uuid[] IS NULL OR c.document_id = ANY ($1))
                       AND ($2::text IS NULL OR c.language = $2)
                     ORDER BY c.search_text <@> to_bm25query(%L, %L)
                     LIMIT %s) x) s',
            tenant, kb, terms, 'chunks_bm25', max_results)
            INTO found_ids
            USING only_documents, only_language, words;
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

-- One knowledge base's two rankings and the ranked rows' details:
-- - the vector top `max_results` (pgvector HNSW, through the knowledge base's partial
--   index on `embedding::vector(<dimensions>)`, named with literals as the API did so
--   that the planner uses it), with ef_search 100, and pgvector's iterative scan when a
--   filter applies; skipped when `query_vector` is NULL;
-- - the BM25 top `max_results` (search_chunks_bm25_ranked, above); skipped when
--   `terms` is NULL;
-- - one row per chunk in either ranking: its rank in each (1-based, NULL when absent),
--   and what a search result shows. `ready` is false for a document that is not ready:
--   its chunks keep their ranks (as they did in the fusion) and are not shown.
-- The API fuses the rankings (reciprocal rank fusion, across knowledge bases).
--
-- Plans: the function's own queries keep one generic plan per connection
-- (plan_cache_mode = force_generic_plan): their best plan does not depend on the values,
-- and planning the final join afresh on every call cost more than running it. The
-- vector query is planned on every call (EXECUTE), which its partial index requires;
-- the BM25 function plans with the values (plan_cache_mode = auto), which its index
-- scan requires.
CREATE FUNCTION search_chunks_hybrid(
    tenant uuid, kb uuid, query_vector vector, terms text, max_results integer,
    only_documents uuid[], only_language text)
    RETURNS TABLE (chunk_id uuid, vector_rank integer, text_rank integer,
                   document_id uuid, knowledge_base_id uuid, title text, ordinal integer,
                   content text, language text, page integer, section text, ready boolean)
    LANGUAGE plpgsql VOLATILE SECURITY INVOKER
    SET search_path = public SET plan_cache_mode = force_generic_plan
    AS $$
    DECLARE
        vector_ids uuid[];
        text_ids uuid[];
    BEGIN
        PERFORM set_config('app.current_tenant_id', tenant::text, true),
                set_config('hnsw.ef_search', '100', true),
                set_config('hnsw.iterative_scan',
                    CASE WHEN only_documents IS NULL AND only_language IS NULL
                         THEN 'off' ELSE 'relaxed_order' END, true);
        IF query_vector IS NOT NULL THEN
            EXECUTE format(
                'SELECT array_agg(v.id ORDER BY v.distance, v.id) FROM (
                     SELECT id, embedding::vector(%1$s) <=> $1::vector(%1$s) AS distance
                     FROM chunks
                     WHERE tenant_id = $2 AND knowledge_base_id = %2$L AND embedding IS NOT NULL
                       AND ($4::uuid[] IS NULL OR document_id = ANY ($4))
                       AND ($5::text IS NULL OR language = $5)
                     ORDER BY embedding::vector(%1$s) <=> $1::vector(%1$s)
                     LIMIT $3) v',
                vector_dims(query_vector), kb)
                INTO vector_ids
                USING query_vector, tenant, max_results, only_documents, only_language;
        END IF;
        IF terms IS NOT NULL THEN
            SELECT array_agg(b.id ORDER BY b.n) INTO text_ids
            FROM search_chunks_bm25_ranked(kb, terms, max_results, only_documents, only_language)
                WITH ORDINALITY AS b(id, n);
        END IF;
        RETURN QUERY
            WITH ranks AS (
                SELECT r.id, min(r.vector_rank)::integer AS vector_rank,
                       min(r.text_rank)::integer AS text_rank
                FROM (
                    SELECT v.id, v.n AS vector_rank, NULL::bigint AS text_rank
                    FROM unnest(vector_ids) WITH ORDINALITY AS v(id, n)
                    UNION ALL
                    SELECT t.id, NULL, t.n FROM unnest(text_ids) WITH ORDINALITY AS t(id, n)
                ) r
                GROUP BY r.id
            )
            SELECT ranks.id, ranks.vector_rank, ranks.text_rank,
                   c.document_id, c.knowledge_base_id, d.title, c.ordinal, c.content,
                   c.language, (c.metadata->>'page')::int, c.metadata->>'section',
                   d.status = 'ready' AND (only_language IS NULL OR c.language = only_language)
            FROM ranks
            JOIN chunks c ON c.id = ranks.id AND c.tenant_id = tenant
            JOIN documents d ON d.id = c.document_id;
    END
    $$;

REVOKE ALL ON FUNCTION search_chunks_bm25_ranked(uuid, text, integer, uuid[], text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION search_chunks_bm25_ranked(uuid, text, integer, uuid[], text) TO iafactory_app;
REVOKE ALL ON FUNCTION searchable_knowledge_bases(uuid, uuid[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION searchable_knowledge_bases(uuid, uuid[]) TO iafactory_app;
REVOKE ALL ON FUNCTION search_chunks_hybrid(uuid, uuid, vector, text, integer, uuid[], text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION search_chunks_hybrid(uuid, uuid, vector, text, integer, uuid[], text) TO iafactory_app;
