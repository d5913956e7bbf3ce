-- The serving API logs in as iafactory_app and never holds the owner's credentials: the
-- drivers run `iafactory-api migrate` (as the owner) before it starts. At start it checks
-- that every migration it embeds is applied, and names any that is not, so it reads the
-- applied versions (and nothing else of this table: no SQL, no timings).
GRANT SELECT (version, success, checksum) ON _sqlx_migrations TO iafactory_app;
