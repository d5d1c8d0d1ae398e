-- A database role per service (issue 13): each service connects as its own role, holding only
-- the privileges its queries use on the tables it uses, so that a flaw in one can neither read
-- nor change another's tables, and none can change the schema. The tables stay owned by the
-- user that runs the migrations (Aurora's master user, used by `guildhall migrate` alone).
--
-- This migration makes the roles. What each may do to each table is not here but in
-- migrations/postgres-grants.sql, which `guildhall migrate` applies whole after every run of the
-- migrations: a table made by any migration, earlier or later than this one, is granted there.
--
-- Roles belong to the cluster, not to one database, and several databases of a cluster may
-- migrate at once (the tests make one per test): a role that another migration made meanwhile
-- is no error, and a role that exists is left as it is (its password, its attributes).
DO $$
DECLARE
    name TEXT;
BEGIN
    FOREACH name IN ARRAY ARRAY['guildhall_accounts', 'guildhall_leaderboard', 'guildhall_uploads', 'guildhall_chat', 'guildhall_worker'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE', name);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL; -- made meanwhile by the migration of another database
            END;
        END IF;
        -- Aurora and RDS: the role logs in with IAM authentication tokens, never a password
        -- (rds_iam exists only there).
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rds_iam') THEN
            EXECUTE format('GRANT rds_iam TO %I', name);
        END IF;
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), name);
    END LOOP;
END
$$;

GRANT USAGE ON SCHEMA public TO guildhall_accounts, guildhall_leaderboard, guildhall_uploads, guildhall_chat, guildhall_worker;
