-- Sign-out that takes effect, and API keys that cannot outgrow or outlive their maker
-- (issue #19, items 2 and 4).
--
-- users.token_version is in every JWT (`ver`); the bearer path compares it with this
-- column (cached at most 5 s). It goes up on sign-out and, through the trigger below,
-- whenever a user's password, role or status changes, so tokens issued before any of
-- those stop working. A suspended user cannot log in and their keys stop working.
--
-- api_keys.created_by_key_id records which key minted a key (NULL: a signed-in user
-- did, user_id). Revoking a key revokes what it minted, transitively, and a key whose
-- ancestor is revoked is refused even if the revocation missed it (a key minted on
-- another replica in the seconds its parent was still cached there).

ALTER TABLE users
    ADD COLUMN token_version bigint NOT NULL DEFAULT 0,
    ADD COLUMN status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended'));

CREATE FUNCTION users_bump_token_version() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF NEW.password_hash IS DISTINCT FROM OLD.password_hash
       OR NEW.role IS DISTINCT FROM OLD.role
       OR NEW.status IS DISTINCT FROM OLD.status THEN
        NEW.token_version := greatest(NEW.token_version, OLD.token_version + 1);
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER users_token_version
    BEFORE UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION users_bump_token_version();

ALTER TABLE api_keys
    ADD COLUMN created_by_key_id uuid REFERENCES api_keys (id) ON DELETE CASCADE;
CREATE INDEX api_keys_created_by_idx ON api_keys (created_by_key_id) WHERE created_by_key_id IS NOT NULL;

-- Login also needs the user's status and token version.
DROP FUNCTION auth_user_by_email(text);
CREATE FUNCTION auth_user_by_email(lookup_email text)
    RETURNS TABLE (id uuid, tenant_id uuid, password_hash text, role text, tenant_status text,
                   user_status text, token_version bigint)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public
    AS $$
        SELECT u.id, u.tenant_id, u.password_hash, u.role, t.status, u.status, u.token_version
        FROM users u JOIN tenants t ON t.id = u.tenant_id
        WHERE lower(u.email) = lower(lookup_email)
    $$;

-- A key also answers with its owner's current role and status (a demoted owner's key
-- loses the admin scope, a suspended owner's key stops), and whether any key in the
-- chain that minted it is revoked.
DROP FUNCTION auth_api_key(bytea);
CREATE FUNCTION auth_api_key(lookup_hash bytea)
    RETURNS TABLE (id uuid, tenant_id uuid, user_id uuid, scopes text[], knowledge_base_ids uuid[],
                   rate_limit_per_minute integer, expires_at timestamptz, revoked_at timestamptz,
                   tenant_status text, owner_role text, owner_status text, lineage_revoked boolean)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public
    AS $$
        WITH RECURSIVE found AS (
            SELECT k.* FROM api_keys k WHERE k.key_hash = lookup_hash
        ), lineage AS (
            SELECT a.id, a.created_by_key_id, a.revoked_at, 0 AS depth
            FROM api_keys a JOIN found f ON a.id = f.created_by_key_id
            UNION ALL
            SELECT a.id, a.created_by_key_id, a.revoked_at, l.depth + 1
            FROM api_keys a JOIN lineage l ON a.id = l.created_by_key_id
            WHERE l.depth < 64
        )
        SELECT k.id, k.tenant_id, k.user_id, k.scopes, k.knowledge_base_ids, k.rate_limit_per_minute,
               k.expires_at, k.revoked_at, t.status, u.role, u.status,
               EXISTS (SELECT 1 FROM lineage l WHERE l.revoked_at IS NOT NULL)
        FROM found k
        JOIN tenants t ON t.id = k.tenant_id
        JOIN users u ON u.id = k.user_id
    $$;

-- The bearer path: what a token's user is now. Only what the check needs.
CREATE FUNCTION auth_session(lookup_user uuid)
    RETURNS TABLE (tenant_id uuid, role text, status text, token_version bigint, tenant_status text)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public
    AS $$
        SELECT u.tenant_id, u.role, u.status, u.token_version, t.status
        FROM users u JOIN tenants t ON t.id = u.tenant_id
        WHERE u.id = lookup_user
    $$;

REVOKE ALL ON FUNCTION auth_user_by_email(text), auth_api_key(bytea), auth_session(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION auth_user_by_email(text), auth_api_key(bytea), auth_session(uuid) TO iafactory_app;
