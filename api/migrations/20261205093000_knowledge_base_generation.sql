-- The model that answers queries over a knowledge base when the query names none:
-- {"provider": "...", "model": "..."}, or NULL for the tenant's own model server.
ALTER TABLE knowledge_bases ADD COLUMN generation jsonb
    CHECK (generation IS NULL OR (jsonb_typeof(generation -> 'provider') = 'string'
                                  AND jsonb_typeof(generation -> 'model') = 'string'));
