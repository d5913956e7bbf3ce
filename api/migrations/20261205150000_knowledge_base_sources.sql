-- The sources of a registered knowledge base (its resource's spec.sources): one row per
-- source, keyed by a stable id derived from what the source names (`inline:<title>`,
-- `configMap:<name>[/<key>]`, `url:<url>`), with the hash of the content last ingested
-- from it, so that re-registering an unchanged source ingests nothing.
CREATE TABLE knowledge_base_sources (
    tenant_id         uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    knowledge_base_id uuid NOT NULL REFERENCES knowledge_bases (id) ON DELETE CASCADE,
    source_id         text NOT NULL CHECK (length(source_id) BETWEEN 1 AND 4096),
    -- sha256 over the source's documents (names, types and bytes); NULL until a first
    -- successful read.
    content_hash      text,
    last_error        text,
    -- When a `url` source was last fetched (successfully or not).
    fetched_at        timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (knowledge_base_id, source_id)
);
ALTER TABLE knowledge_base_sources ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON knowledge_base_sources
    USING (tenant_id = current_tenant_id()) WITH CHECK (tenant_id = current_tenant_id());

-- The source a document came from; NULL for uploaded documents.
ALTER TABLE documents ADD COLUMN source_id text;
-- The same content may come from two sources (or a source and an upload): a document is
-- unique by content within its source, uploads within the uploads.
ALTER TABLE documents DROP CONSTRAINT documents_knowledge_base_id_content_hash_key;
CREATE UNIQUE INDEX documents_content_idx ON documents (knowledge_base_id, coalesce(source_id, ''), content_hash);
CREATE INDEX documents_source_idx ON documents (knowledge_base_id, source_id) WHERE source_id IS NOT NULL;
