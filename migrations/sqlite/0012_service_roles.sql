-- A database role per service is PostgreSQL's (see migrations/postgres/0012_service_roles.sql):
-- a SQLite file has no users, and only one process opens it. Nothing to do here; the number is
-- kept so that both dialects list the same migrations.
SELECT 1;
