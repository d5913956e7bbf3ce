-- Least privilege below the API (#19 item 7): requests log in as iafactory_app (the
-- API gives it LOGIN and its password at start-up, as the owner; see api/src/db.rs).
-- That role owns nothing and is granted only the table, sequence and function rights
-- the earlier migrations list. Here: it may create nothing in the schema (PostgreSQL
-- before 15 let every role create objects in `public`), and it holds no membership in
-- the migrating role, so `SET ROLE` to the owner is refused.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
REVOKE CREATE ON SCHEMA public FROM iafactory_app;
DO $$
BEGIN
    IF pg_has_role('iafactory_app', current_user, 'MEMBER') AND current_user <> 'iafactory_app' THEN
        EXECUTE format('REVOKE %I FROM iafactory_app', current_user);
    END IF;
END
$$;
