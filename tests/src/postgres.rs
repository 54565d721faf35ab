//! PostgreSQL for the tests: the server comes from `CARNET_TEST_POSTGRES_URL` (the test command
//! starts a throwaway cluster and sets it). Without it, PostgreSQL tests are skipped, unless
//! `CARNET_REQUIRE_POSTGRES=1` (set by the test command and CI), where they fail.

use uuid::Uuid;

/// Returns the server URL, `None` to skip; panics when PostgreSQL is required but missing.
pub fn server_url() -> Option<String> {
    match std::env::var("CARNET_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CARNET_REQUIRE_POSTGRES").as_deref() == Ok("1") => {
            panic!("CARNET_REQUIRE_POSTGRES=1 but CARNET_TEST_POSTGRES_URL is not set")
        }
        _ => {
            eprintln!("skipped: CARNET_TEST_POSTGRES_URL is not set (run the README's test command)");
            None
        }
    }
}

/// Creates an empty database on `server` and returns its URL.
pub async fn fresh_database(server: &str) -> String {
    let name = format!("carnet_t_{}", Uuid::now_v7().simple());
    carnet_kit::db::create_postgres_database(server, &name).await.expect("create a test database")
}
