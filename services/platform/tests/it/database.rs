//! PostgreSQL connections as production makes them: `sslmode=verify-full` against a server whose
//! certificate a CA of the test's own signed; a pool whose password changes under it (IAM tokens
//! expire every 15 minutes), renewed on a timer; the database roles migration 0012 makes, on a
//! cluster of the test's own where several databases migrate at once. Each test starts its own
//! PostgreSQL (`ThrowawayPostgres`), so they need the server binaries and `openssl`, as
//! `scripts/test.sh` has; `GUILDHALL_SKIP_REAL_BACKENDS=1` skips them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use platform::config::{DatabaseAuth, DatabaseConfig, Secret};
use platform::db::{Database, PasswordSource, Role};
use platform::testing::{PostgresSetup, ThrowawayPostgres, real_backends_skipped};
use sqlx::Connection;

fn skipped() -> bool {
    if real_backends_skipped() {
        eprintln!("GUILDHALL_SKIP_REAL_BACKENDS=1: no PostgreSQL of the test's own");
        return true;
    }
    false
}

/// A fresh folder for certificates, removed at the end of the test.
struct Folder(PathBuf);

impl Folder {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("guildhall-certs-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("certificate folder");
        Folder(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn openssl(args: &[&str], dir: &Path) {
    let out = std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
    assert!(out.status.success(), "openssl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// A certificate authority `name` (`name.pem`, `name.key`) made with openssl: P-256, a day long.
fn certificate_authority(dir: &Folder, name: &str) -> PathBuf {
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
        &dir.0,
    );
    dir.path(&format!("{name}.pem"))
}

/// A server certificate for the DNS name `host` (`server.pem`, `server.key`), signed by `ca`.
fn server_certificate(dir: &Folder, ca: &str, host: &str) -> (PathBuf, PathBuf) {
    openssl(
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            &format!("/CN={host}"),
        ],
        &dir.0,
    );
    let extensions = format!(
        "subjectAltName=DNS:{host}\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
    );
    std::fs::write(dir.path("server.ext"), extensions).expect("extensions file");
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "1",
            "-out",
            "server.pem",
            "-extfile",
            "server.ext",
        ],
        &dir.0,
    );
    (dir.path("server.pem"), dir.path("server.key"))
}

fn postgres(url: String) -> DatabaseConfig {
    DatabaseConfig::Postgres { url: Secret::new(url), max_connections: 3, auth: DatabaseAuth::Url, service_roles: false }
}

/// The whole error chain, to look for the cause in it.
async fn refusal(config: &DatabaseConfig) -> String {
    match Database::connect(config).await {
        Ok(_) => panic!("connected, but should have been refused"),
        Err(err) => format!("{err:#}"),
    }
}

/// `sslmode=verify-full` (ECS: `sslrootcert` the RDS bundle in the image) connects only to a
/// server whose certificate chains to the given CAs and names the host connected to. The same
/// server under `sslmode=require` is believed whoever signed its certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_trusts_only_the_named_server_of_the_given_authority() {
    if skipped() {
        return;
    }
    let dir = Folder::new();
    let ca = certificate_authority(&dir, "test-ca");
    let stranger = certificate_authority(&dir, "stranger-ca");
    let (cert, key) = server_certificate(&dir, "test-ca", "localhost");
    let server =
        ThrowawayPostgres::start_with(PostgresSetup { tls: Some((cert, key)), passwords: false }).await.expect("postgres with TLS");
    let port = server.port();
    let url = |host: &str, mode: &str, root: &Path| {
        postgres(format!("postgres://guildhall@{host}:{port}/postgres?sslmode={mode}&sslrootcert={}", root.display()))
    };

    let db = Database::connect(&url("localhost", "verify-full", &ca)).await.expect("the right CA and name connect");
    let encrypted: bool =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetch_one(db.pool()).await.expect("pg_stat_ssl");
    assert!(encrypted, "the connection is TLS");
    db.close().await;

    let err = refusal(&url("localhost", "verify-full", &stranger)).await;
    assert!(err.contains("UnknownIssuer"), "a certificate from another CA is refused: {err}");
    let err = refusal(&url("127.0.0.1", "verify-full", &ca)).await;
    assert!(err.contains("certificate not valid for name"), "a certificate for another name is refused: {err}");

    // The bundle the image carries loads (all its roots parse), and trusts no test CA.
    let bundle = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docker/rds-global-bundle.pem");
    let err = refusal(&url("localhost", "verify-full", &bundle)).await;
    assert!(err.contains("UnknownIssuer"), "the RDS bundle is read, and our test CA is not in it: {err}");

    // What `require` alone would have allowed.
    let db = Database::connect(&url("localhost", "require", &stranger)).await.expect("require checks nothing");
    db.close().await;
}

/// IAM tokens last 15 minutes and are checked only at login, so the pool is handed fresh ones on a
/// timer (`connect_with_passwords`). Here the "token" is a role's password that the test changes:
/// a pool that renews keeps opening connections after each change; one that does not renew
/// cannot open a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_keeps_connecting_as_its_password_changes() {
    if skipped() {
        return;
    }
    let server = ThrowawayPostgres::start_with(PostgresSetup { tls: None, passwords: true }).await.expect("postgres with passwords");
    let mut owner = sqlx::PgConnection::connect(&server.url()).await.expect("owner");
    sqlx::query("CREATE ROLE renewed LOGIN PASSWORD 'first'").execute(&mut owner).await.expect("role");

    let current = Arc::new(Mutex::new("first".to_owned()));
    let made = Arc::new(AtomicUsize::new(0));
    let source = |current: &Arc<Mutex<String>>, made: &Arc<AtomicUsize>| -> PasswordSource {
        let (current, made) = (current.clone(), made.clone());
        Arc::new(move || {
            made.fetch_add(1, Ordering::SeqCst);
            let password = current.lock().expect("password").clone();
            Box::pin(async move { Ok(Secret::new(password)) })
        })
    };
    let config = postgres(format!("postgres://renewed@127.0.0.1:{}/postgres", server.port()));
    let renewing =
        Database::connect_with_passwords(&config, None, source(&current, &made), Duration::from_millis(20)).await.expect("renewing");
    let never = Arc::new(AtomicUsize::new(0));
    let stale = Database::connect_with_passwords(&config, None, source(&current, &never), Duration::from_secs(3600)).await.expect("stale");

    for password in ["second", "third"] {
        sqlx::query(&format!("ALTER ROLE renewed PASSWORD '{password}'")).execute(&mut owner).await.expect("new password");
        *current.lock().expect("password") = password.to_owned();
        // Two more renewals: the second starts only once the first, made with the new password,
        // is in the pool's options.
        let seen = made.load(Ordering::SeqCst);
        for _ in 0..500 {
            if made.load(Ordering::SeqCst) >= seen + 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(made.load(Ordering::SeqCst) >= seen + 2, "the pool renews its password");
        // Holding all three at once, at least two are new logins.
        let mut held = Vec::new();
        for _ in 0..3 {
            let mut conn = renewing.pool().acquire().await.unwrap_or_else(|err| panic!("a new login with {password}: {err}"));
            let user: String = sqlx::query_scalar("SELECT current_user::text").fetch_one(&mut *conn).await.expect("query");
            assert_eq!(user, "renewed");
            held.push(conn);
        }
        drop(held);
        // The pool that kept its first password has one connection open; a second login fails.
        let first = stale.pool().acquire().await.expect("its open connection");
        let err = stale.pool().acquire().await.map(|_| ()).expect_err("a login with an old password");
        assert_eq!(err.as_database_error().and_then(|e| e.code()).as_deref(), Some("28P01"), "{err}");
        drop(first);
    }
    assert_eq!(never.load(Ordering::SeqCst), 1, "made its password once, at the start");
    renewing.close().await;
    stale.close().await;
}

/// Migration 0012's roles on a cluster where they do not exist yet, while four databases migrate
/// at once (roles belong to the cluster, as in the tests' shared server): every migration
/// succeeds, and each role logs in, holds only its own service's tables (the outbox aside, to
/// which it may only append), cannot read another's, and cannot change the schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_made_once_and_hold_only_their_own_tables() {
    if skipped() {
        return;
    }
    let server = ThrowawayPostgres::start().await.expect("postgres");
    let mut owner = sqlx::PgConnection::connect(&server.url()).await.expect("owner");
    let names = ["one", "two", "three", "four"];
    for name in names {
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut owner).await.expect("database");
    }
    let url = |user: &str, database: &str| format!("postgres://{user}@127.0.0.1:{}/{database}", server.port());
    let migrations = names.map(|name| {
        let config = postgres(url("guildhall", name));
        async move {
            let db = Database::connect(&config).await?;
            let result = db.migrate().await;
            db.close().await;
            result
        }
    });
    for result in futures_util::future::join_all(migrations).await {
        result.expect("each database migrates while the others make the same roles");
    }

    let mut one = sqlx::PgConnection::connect(&url("guildhall", "one")).await.expect("database one");
    for role in Role::ALL {
        let (login, superuser, create_db, create_role): (bool, bool, bool, bool) =
            sqlx::query_as("SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = $1")
                .bind(role.name())
                .fetch_one(&mut one)
                .await
                .expect("the role exists");
        assert_eq!((login, superuser, create_db, create_role), (true, false, false, false), "{}", role.name());
        let create: bool = sqlx::query_scalar("SELECT has_schema_privilege($1, 'public', 'CREATE')")
            .bind(role.name())
            .fetch_one(&mut one)
            .await
            .expect("schema privilege");
        assert!(!create, "{} cannot create tables", role.name());
    }

    // Every table is some role's: a table made without grants would serve no service.
    let orphans: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relname <> '_sqlx_migrations' \
         AND NOT EXISTS (SELECT 1 FROM aclexplode(c.relacl) a WHERE pg_get_userbyid(a.grantee) LIKE 'guildhall\\_%') \
         ORDER BY 1",
    )
    .fetch_all(&mut one)
    .await
    .expect("orphans");
    assert!(orphans.is_empty(), "tables no role may use: {orphans:?}; grant them in migrations/postgres-grants.sql");

    // The API services share no table but those of the platform: the outbox and the audit log,
    // to which the others only append, and the ended sessions and the server keys, which accounts
    // (which ends sessions and serves the keys' routes) writes and the others only read.
    let tables_of = |role: Role| {
        sqlx::query_as::<_, (String, String)>(
            "SELECT c.relname::text, a.privilege_type::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, \
             aclexplode(c.relacl) a WHERE n.nspname = 'public' AND pg_get_userbyid(a.grantee) = $1 ORDER BY 1, 2",
        )
        .bind(role.name())
    };
    let platform = [("outbox", "INSERT"), ("admin_audit", "INSERT"), ("session_revocations", "SELECT"), ("admin_keys", "SELECT")];
    // Every instance, whatever its role, beats the replica heartbeat and advances the database's
    // history (`platform::replica`, `platform::restore`): one row each, read and updated only.
    let every_instance = ["replica_heartbeat", "database_history"];
    let api = [Role::Accounts, Role::Leaderboard, Role::Uploads, Role::Chat];
    let mut grants = Vec::new();
    for role in api {
        grants.push(tables_of(role).fetch_all(&mut one).await.expect("grants"));
    }
    for (i, a) in grants.iter().enumerate() {
        assert!(a.iter().filter(|(t, _)| t == "outbox").all(|(_, p)| p == "INSERT"), "{:?} only appends to the outbox", api[i]);
        if api[i] != Role::Accounts {
            for (table, only) in platform {
                assert!(a.iter().filter(|(t, _)| t == table).all(|(_, p)| p == only), "{:?} may only {only} {table}: {a:?}", api[i]);
            }
        }
        for table in every_instance {
            let held: Vec<&str> = a.iter().filter(|(t, _)| t == table).map(|(_, p)| p.as_str()).collect();
            assert_eq!(held, ["SELECT", "UPDATE"], "{:?} on {table}", api[i]);
        }
        for (j, b) in grants.iter().enumerate().skip(i + 1) {
            let shared: Vec<&String> = a
                .iter()
                .map(|(t, _)| t)
                .filter(|t| {
                    !platform.iter().any(|(p, _)| p == t) && !every_instance.contains(&t.as_str()) && b.iter().any(|(u, _)| u == *t)
                })
                .collect();
            assert!(shared.is_empty(), "{:?} and {:?} share {shared:?}", api[i], api[j]);
        }
    }
    let worker = tables_of(Role::Worker).fetch_all(&mut one).await.expect("grants");
    assert!(
        !worker.iter().any(|(t, _)| ["accounts", "sessions", "refresh_tokens"].contains(&t.as_str())),
        "the worker has no business with credentials: {worker:?}"
    );

    // A privilege given by hand (or by an older grants file) is gone after the next migration:
    // the roles hold exactly what the grants file says.
    sqlx::query("GRANT SELECT ON accounts TO guildhall_chat").execute(&mut one).await.expect("a stray grant");
    let again = Database::connect(&postgres(url("guildhall", "one"))).await.expect("owner");
    again.migrate().await.expect("migrate again");
    again.close().await;

    // And PostgreSQL enforces it: each role, logged in, is refused what is not its own.
    for (role, denied) in [
        (Role::Chat, "SELECT count(*) FROM accounts"),
        (Role::Leaderboard, "SELECT count(*) FROM chat_messages"),
        (Role::Uploads, "SELECT count(*) FROM outbox"),
        (Role::Accounts, "DELETE FROM leaderboard_records"),
        (Role::Worker, "SELECT count(*) FROM sessions"),
        (Role::Accounts, "DROP TABLE sessions"),
        (Role::Worker, "CREATE TABLE mine (id TEXT)"),
        (Role::Chat, "ALTER TABLE chat_messages ADD COLUMN x TEXT"),
    ] {
        let mut conn = sqlx::PgConnection::connect(&url(role.name(), "one")).await.expect("the role logs in");
        let err = sqlx::query(denied).execute(&mut conn).await.expect_err(denied);
        // 42501 insufficient_privilege; DDL on another's table says "must be owner" (42501 too).
        assert_eq!(err.as_database_error().and_then(|e| e.code()).as_deref(), Some("42501"), "{} {denied}: {err}", role.name());
    }
    // While its own work goes through.
    let mut chat = sqlx::PgConnection::connect(&url(Role::Chat.name(), "one")).await.expect("chat logs in");
    sqlx::query(
        "INSERT INTO chat_messages (id, channel_id, sender_id, sender_name, body, created_at) VALUES ('m', 'room:x', 'a', 'ana', 'hi', 0)",
    )
    .execute(&mut chat)
    .await
    .expect("chat writes a message");
    sqlx::query("INSERT INTO outbox (id, event_type, payload, created_at) VALUES ('e', 't', '{}', 0)")
        .execute(&mut chat)
        .await
        .expect("chat records an event");
}
