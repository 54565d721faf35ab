//! Database connections. SQLite (the default, one file per service, WAL) or PostgreSQL (split
//! mode), through the same sea-orm code.
//!
//! SQLite allows one writer at a time, so a SQLite [`Db`] keeps a single-connection write pool
//! (writers queue in the pool instead of failing with `SQLITE_BUSY`) and a read pool; on
//! PostgreSQL both handles share one pool.

use std::time::Duration;

use sea_orm::{
    ConnectOptions, Database, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, SqliteTransactionMode,
    TransactionOptions, TransactionTrait,
};

/// A service's database handles.
#[derive(Clone, Debug)]
pub struct Db {
    pub write: DatabaseConnection,
    pub read: DatabaseConnection,
}

impl Db {
    pub fn backend(&self) -> DbBackend {
        self.write.get_database_backend()
    }

    /// Begins a write transaction. On SQLite it takes the write lock at once (`BEGIN
    /// IMMEDIATE`), so a transaction that reads before it writes waits for another process's
    /// writer instead of failing when it upgrades.
    pub async fn begin_write(&self) -> Result<DatabaseTransaction, DbErr> {
        let options = TransactionOptions {
            isolation_level: None,
            access_mode: None,
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
        };
        self.write.begin_with_options(options).await
    }

    /// Closes both pools.
    pub async fn close(self) {
        let _ = self.write.close().await;
        let _ = self.read.close().await;
    }
}

/// Returns the SQLite URL of `file` (created when missing).
pub fn sqlite_url(file: &std::path::Path) -> String {
    format!("sqlite://{}?mode=rwc", file.display())
}

/// Connects to `url` (`sqlite://…` or `postgres://…`) with at most `max_connections` readers.
pub async fn connect(url: &str, max_connections: u32) -> Result<Db, DbErr> {
    if url.starts_with("sqlite:") {
        let write = Database::connect(sqlite_options(url, 1)).await?;
        let read = Database::connect(sqlite_options(url, max_connections.max(1))).await?;
        Ok(Db { write, read })
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        let mut opts = ConnectOptions::new(url);
        opts.max_connections(max_connections.max(2))
            .min_connections(1)
            .connect_timeout(Duration::from_secs(10))
            .acquire_timeout(Duration::from_secs(30))
            .sqlx_logging(false);
        let conn = Database::connect(opts).await?;
        Ok(Db { write: conn.clone(), read: conn })
    } else {
        Err(DbErr::Custom("database_url must start with sqlite: or postgres:".into()))
    }
}

fn sqlite_options(url: &str, max_connections: u32) -> ConnectOptions {
    use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
    let mut opts = ConnectOptions::new(url);
    opts.max_connections(max_connections)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(30))
        // A local file does not drop connections: no ping round trip before each use.
        .test_before_acquire(false)
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(|o| {
            o.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true)
                // Rows a query may queue ahead of its reader (sqlx's default is 50): a large
                // result then streams without the worker thread blocking and waking per row.
                .row_buffer_size(1024)
        });
    opts
}

/// Creates database `name` on the PostgreSQL server at `server_url` (any database URL of that
/// server) and returns the URL of the new database. `name` must be a plain identifier.
pub async fn create_postgres_database(server_url: &str, name: &str) -> Result<String, DbErr> {
    use sea_orm::ConnectionTrait as _;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(DbErr::Custom("database name must be letters, digits and _".into()));
    }
    let admin = Database::connect(server_url).await?;
    let created = admin.execute_unprepared(&format!("CREATE DATABASE {name}")).await;
    let _ = admin.close().await;
    created?;
    Ok(replace_database(server_url, name))
}

/// Returns `url` with its database name replaced by `name`, keeping any query string.
fn replace_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let (scheme, rest) = base.split_once("://").unwrap_or(("postgres", base));
    let host = rest.split_once('/').map_or(rest, |(h, _)| h);
    format!("{scheme}://{host}/{name}{query}")
}

/// Returns the current time at the precision every backend stores (microseconds), so a value
/// returned after a write equals the value read back later.
pub fn now() -> chrono::DateTime<chrono::Utc> {
    truncate(chrono::Utc::now())
}

/// Truncates a time to the stored precision (microseconds).
pub fn truncate(at: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
    use chrono::SubsecRound as _;
    at.trunc_subsecs(6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_replace_database_keeps_credentials_and_query() {
        assert_eq!(replace_database("postgres://u:p@h:5432/postgres", "x"), "postgres://u:p@h:5432/x");
        assert_eq!(replace_database("postgres://h:5432", "x"), "postgres://h:5432/x");
        assert_eq!(replace_database("postgres://u@h/db?sslmode=disable", "x"), "postgres://u@h/x?sslmode=disable");
    }
}
