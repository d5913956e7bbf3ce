-- The platform API's core schema: tenants, users, API keys, usage logs, and the
-- tables the RAG pipeline and the workflow engine fill.
--
-- Isolation: every tenant-owned table carries tenant_id and a row-level-security
-- policy on the transaction's `app.current_tenant_id`. Requests run as the role
-- iafactory_app, which neither owns these tables nor bypasses RLS, so the policies
-- always apply to it (see docs/api.md, "Tenant isolation").

CREATE EXTENSION IF NOT EXISTS vector;

-- Roles are cluster-wide: databases of one cluster migrating at once race to create it.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'iafactory_app') THEN
        CREATE ROLE iafactory_app NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;
-- The migrating role (the database owner) switches to iafactory_app for requests.
DO $$
BEGIN
    EXECUTE format('GRANT iafactory_app TO %I', current_user);
END
$$;

-- The tenant of the current transaction, or NULL outside one.
CREATE FUNCTION current_tenant_id() RETURNS uuid
    LANGUAGE sql STABLE
    AS $$ SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid $$;

CREATE TABLE tenants (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    slug        text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$'),
    plan        text NOT NULL DEFAULT 'free' CHECK (plan IN ('free', 'pro', 'enterprise')),
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    settings    jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    email         text NOT NULL CHECK (email ~ '^[^@\s]+@[^@\s]+$' AND length(email) <= 320),
    password_hash text NOT NULL,
    role          text NOT NULL CHECK (role IN ('admin', 'tenant_admin', 'user')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
-- An e-mail address logs in without naming its tenant, so it is unique platform-wide.
CREATE UNIQUE INDEX users_email_key ON users (lower(email));
CREATE INDEX users_tenant_idx ON users (tenant_id);

CREATE TABLE knowledge_bases (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 253),
    description  text,
    languages    text[] NOT NULL DEFAULT '{ar,fr,en}',
    embedding    jsonb NOT NULL,
    chunking     jsonb NOT NULL,
    vector_store text NOT NULL DEFAULT 'inherit' CHECK (vector_store IN ('inherit', 'pgvector', 'qdrant')),
    -- 'api' when created through /api, 'operator' when registered from a resource.
    managed_by   text NOT NULL DEFAULT 'api' CHECK (managed_by IN ('api', 'operator')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name)
);

CREATE TABLE documents (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id         uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    knowledge_base_id uuid NOT NULL REFERENCES knowledge_bases (id) ON DELETE CASCADE,
    title             text NOT NULL,
    content_type      text NOT NULL,
    content_hash      text NOT NULL,
    size_bytes        bigint NOT NULL,
    status            text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'processing', 'ready', 'failed')),
    error             text,
    language          text,
    metadata          jsonb NOT NULL DEFAULT '{}',
    chunk_count       integer NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (knowledge_base_id, content_hash)
);
CREATE INDEX documents_tenant_idx ON documents (tenant_id, knowledge_base_id);

CREATE TABLE chunks (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id         uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    knowledge_base_id uuid NOT NULL REFERENCES knowledge_bases (id) ON DELETE CASCADE,
    document_id       uuid NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    ordinal           integer NOT NULL,
    content           text NOT NULL,
    language          text,
    -- Dimensions vary by knowledge base; the RAG pipeline indexes each one's own.
    embedding         vector,
    metadata          jsonb NOT NULL DEFAULT '{}',
    created_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (document_id, ordinal)
);
CREATE INDEX chunks_kb_idx ON chunks (tenant_id, knowledge_base_id);

CREATE TABLE workflows (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 253),
    description     text,
    -- The Workflow resource's spec: agents, trigger, timeoutSeconds.
    definition      jsonb NOT NULL,
    managed_by      text NOT NULL DEFAULT 'api' CHECK (managed_by IN ('api', 'operator')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name)
);

CREATE TABLE workflow_executions (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    workflow_id  uuid NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    status       text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'cancelled')),
    input        text NOT NULL DEFAULT '',
    output       text,
    error        text,
    failed_agent text,
    steps        jsonb NOT NULL DEFAULT '[]',
    trigger      text NOT NULL DEFAULT 'manual',
    started_at   timestamptz,
    finished_at  timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX workflow_executions_workflow_idx ON workflow_executions (tenant_id, workflow_id, created_at DESC);

CREATE TABLE api_keys (
    id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id             uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_id               uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name                  text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    -- The first characters of the key, to recognise it in a list; never enough to use it.
    key_prefix            text NOT NULL,
    -- SHA-256 of the whole key: the key is 256 random bits, so a fast hash is as
    -- strong as a slow one here, and verification stays off the latency budget.
    key_hash              bytea NOT NULL UNIQUE,
    scopes                text[] NOT NULL CHECK (scopes <@ ARRAY['query', 'ingest', 'admin']::text[]),
    knowledge_base_ids    uuid[],
    rate_limit_per_minute integer NOT NULL CHECK (rate_limit_per_minute BETWEEN 1 AND 100000),
    usage_count           bigint NOT NULL DEFAULT 0,
    last_used_at          timestamptz,
    expires_at            timestamptz,
    revoked_at            timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX api_keys_tenant_idx ON api_keys (tenant_id);

CREATE TABLE api_usage_logs (
    id               bigserial PRIMARY KEY,
    tenant_id        uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    key_id           uuid REFERENCES api_keys (id) ON DELETE SET NULL,
    user_id          uuid REFERENCES users (id) ON DELETE SET NULL,
    endpoint         text NOT NULL,
    method           text NOT NULL,
    status           smallint NOT NULL,
    response_time_ms integer NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX api_usage_logs_tenant_idx ON api_usage_logs (tenant_id, created_at DESC);

-- Row-level security on every tenant-owned table.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['users', 'knowledge_bases', 'documents', 'chunks', 'workflows',
                             'workflow_executions', 'api_keys', 'api_usage_logs']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I USING (tenant_id = current_tenant_id()) WITH CHECK (tenant_id = current_tenant_id())',
            t);
    END LOOP;
END
$$;
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenants
    USING (id = current_tenant_id()) WITH CHECK (id = current_tenant_id());

GRANT USAGE ON SCHEMA public TO iafactory_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO iafactory_app;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO iafactory_app;
REVOKE ALL ON _sqlx_migrations FROM iafactory_app;
-- Tables of later migrations get the same grants (their migration adds the policy).
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO iafactory_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE ON SEQUENCES TO iafactory_app;

-- Authentication happens before a tenant is known: these two lookups run as the
-- owner (SECURITY DEFINER) and return only what authentication needs.
CREATE FUNCTION auth_user_by_email(lookup_email text)
    RETURNS TABLE (id uuid, tenant_id uuid, password_hash text, role text, tenant_status text)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public
    AS $$
        SELECT u.id, u.tenant_id, u.password_hash, u.role, t.status
        FROM users u JOIN tenants t ON t.id = u.tenant_id
        WHERE lower(u.email) = lower(lookup_email)
    $$;

CREATE FUNCTION auth_api_key(lookup_hash bytea)
    RETURNS TABLE (id uuid, tenant_id uuid, user_id uuid, scopes text[], knowledge_base_ids uuid[],
                   rate_limit_per_minute integer, expires_at timestamptz, revoked_at timestamptz,
                   tenant_status text)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public
    AS $$
        SELECT k.id, k.tenant_id, k.user_id, k.scopes, k.knowledge_base_ids, k.rate_limit_per_minute,
               k.expires_at, k.revoked_at, t.status
        FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
        WHERE k.key_hash = lookup_hash
    $$;

-- A tenant slug is public (it is in the tenant's host name); looking one up does not
-- reveal anything, and the operator's bootstrap needs it before any tenant context.
CREATE FUNCTION tenant_id_by_slug(lookup_slug text) RETURNS uuid
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public
    AS $$ SELECT id FROM tenants WHERE slug = lookup_slug $$;

REVOKE ALL ON FUNCTION auth_user_by_email(text), auth_api_key(bytea), tenant_id_by_slug(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION auth_user_by_email(text), auth_api_key(bytea), tenant_id_by_slug(text),
    current_tenant_id() TO iafactory_app;
