//! `carnet backup` and `carnet restore` for the embedded mode (docs/backup.md).
//!
//! A backup is a directory: a `VACUUM INTO` copy of every service database (a consistent
//! snapshot taken through a connection, so Carnet may keep running), the mesh key, and
//! `manifest.json` with the size and SHA-256 of every file (written last: a directory without it
//! is no backup). The key store never goes there: whoever holds old keys next to old data can
//! read the people erased since, so it goes only to a `--keys-out` directory kept apart.
//!
//! A restore checks everything before it changes anything, keeps a copy of the current DSAR
//! database (erasure ledger, requests, legal holds, audit trail: none of it may be rolled back),
//! puts the files in place, merges the kept DSAR rows back over the backup's, and replays every
//! erasure the backup predates through a node started in this process, so every participant
//! erases again exactly as it does for a live erasure.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use chrono::{DateTime, Utc};
use sea_orm::EntityTrait as _;
use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteLockingMode, SqlitePoolOptions};
use sea_orm::sqlx::{self, AssertSqlSafe, ConnectOptions as _, Connection as _};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use carnet_cli::node::{self, Mode};
use carnet_cli::{CarnetConfig, Target};
use carnet_dsar::entity::ledger;

const MANIFEST: &str = "manifest.json";
const FORMAT: &str = "carnet-backup/1";
const MESH_KEY: &str = "mesh.key";
/// The key store (carnet_kit::keystore): its database and the master key of the local KMS.
const KEY_STORE_DB: &str = "keys.db";
const KEY_STORE_FILES: [&str; 2] = [KEY_STORE_DB, "master.key"];
/// The DSAR database as it was before a restore, kept until its rows are merged back.
const KEPT_DSAR: &str = "dsar.kept-by-restore.db";
/// Copied in this order: DSAR last, so its ledger covers every erasure of the copy's duration.
const BACKUP_ORDER: [Target; 6] =
    [Target::Contacts, Target::Consent, Target::Comms, Target::Enrichment, Target::Gateway, Target::Dsar];
/// How long the replay may take before the restore gives up and says how to finish it.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Contents {
    Data,
    KeyStore,
}

/// `manifest.json` of a backup directory (data) or of its key store directory.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: String,
    contents: Contents,
    /// Pairs a data backup with the key store copied in the same run.
    backup_id: Uuid,
    carnet_version: String,
    /// When the copy started: later changes may be missing, so the replay starts here.
    created_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
    /// Data: entries of the backup's erasure ledger and the latest time (requested or completed).
    #[serde(default)]
    ledger_entries: Option<u64>,
    #[serde(default)]
    ledger_latest_at: Option<DateTime<Utc>>,
    /// Data: `separate` (to --keys-out), `left-out` (--without-keys) or `none` (no key store).
    #[serde(default)]
    key_store: Option<String>,
    files: Vec<FileEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct FileEntry {
    name: String,
    bytes: u64,
    sha256: String,
}

/// Copies the embedded databases, the mesh key and (to `keys_out_opt`) the key store; returns
/// the summary to print.
pub async fn backup(
    cfg: &CarnetConfig,
    out: &Path,
    keys_out_opt: Option<&Path>,
    without_keys: bool,
) -> anyhow::Result<Value> {
    let data_dir = cfg.data_dir();
    if !data_dir.is_dir() {
        bail!("the data dir {} does not exist", data_dir.display());
    }
    let mut dbs = Vec::new();
    for target in BACKUP_ORDER {
        let path = sqlite_path(cfg, target)?;
        if !path.is_file() {
            bail!("{} does not exist: start carnet once (or run `carnet migrate`) first", path.display());
        }
        dbs.push((target, path));
    }
    let key_files = key_store_files(&data_dir);
    let key_store = match (keys_out_opt, without_keys) {
        (Some(_), true) => bail!("--keys-out and --without-keys exclude each other"),
        (Some(_), false) => "separate",
        (None, _) if key_files.is_empty() => "none",
        (None, true) => "left-out",
        (None, false) => bail!(
            "{} holds a key store ({}): give --keys-out DIR, kept apart from --out, or --without-keys (docs/backup.md)",
            data_dir.display(),
            key_files.join(", ")
        ),
    };
    check_empty(out, "--out")?;
    if let Some(keys_out) = keys_out_opt {
        check_empty(keys_out, "--keys-out")?;
        let (a, b) = (std::path::absolute(out)?, std::path::absolute(keys_out)?);
        if a.starts_with(&b) || b.starts_with(&a) {
            bail!("--keys-out must be apart from --out: the key store is never stored with the data");
        }
    }
    create_private_dir(out)?;
    let backup_id = Uuid::now_v7();
    let created_at = carnet_kit::db::now();
    let mut names = Vec::new();
    for (target, path) in &dbs {
        let name = format!("{target}.db");
        vacuum_into(path, &out.join(&name)).await?;
        names.push(name);
    }
    if data_dir.join(MESH_KEY).is_file() {
        copy_private(&data_dir.join(MESH_KEY), &out.join(MESH_KEY))?;
        names.push(MESH_KEY.to_string());
    }
    let ledger = read_ledger(&out.join("dsar.db"), true).await?;
    let ledger_latest_at = ledger.iter().flat_map(|e| [Some(e.requested_at), e.completed_at]).flatten().max();
    // The key store after the data: a key destroyed meanwhile leaves its data unreadable, which
    // is what that erasure wanted; a key missing for data copied earlier cannot happen.
    let mut keys_summary = json!(key_store);
    if let Some(keys_out) = keys_out_opt {
        create_private_dir(keys_out)?;
        for name in &key_files {
            if name == KEY_STORE_DB {
                vacuum_into(&data_dir.join(name), &keys_out.join(name)).await?;
            } else {
                copy_private(&data_dir.join(name), &keys_out.join(name))?;
            }
        }
        let manifest = Manifest {
            format: FORMAT.into(),
            contents: Contents::KeyStore,
            backup_id,
            carnet_version: env!("CARGO_PKG_VERSION").into(),
            created_at,
            finished_at: carnet_kit::db::now(),
            ledger_entries: None,
            ledger_latest_at: None,
            key_store: None,
            files: entries(keys_out, &key_files)?,
        };
        write_manifest(keys_out, &manifest)?;
        keys_summary = json!({"dir": keys_out, "files": key_files});
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        contents: Contents::Data,
        backup_id,
        carnet_version: env!("CARGO_PKG_VERSION").into(),
        created_at,
        finished_at: carnet_kit::db::now(),
        ledger_entries: Some(ledger.len() as u64),
        ledger_latest_at,
        key_store: Some(key_store.into()),
        files: entries(out, &names)?,
    };
    write_manifest(out, &manifest)?;
    Ok(json!({
        "backup": out, "backup_id": backup_id, "created_at": created_at,
        "files": manifest.files.iter().map(|f| json!({"name": f.name, "bytes": f.bytes})).collect::<Vec<_>>(),
        "ledger_entries": ledger.len(), "ledger_latest_at": ledger_latest_at, "key_store": keys_summary,
    }))
}

/// What `carnet restore` was asked to do.
pub struct RestoreOptions<'a> {
    pub from: &'a Path,
    pub keys_from_opt: Option<&'a Path>,
    /// Restore without keeping the data dir's DSAR state (missing or unreadable).
    pub discard_current_dsar: bool,
}

/// One file to put in place.
struct Restored {
    name: String,
    src: PathBuf,
    dest: PathBuf,
    sha256: String,
    sqlite: bool,
}

/// Restores a backup into the data dir (Carnet stopped), keeps the current DSAR state and
/// replays the erasures the backup predates; returns the summary to print.
pub async fn restore(cfg: &CarnetConfig, opts: RestoreOptions<'_>) -> anyhow::Result<Value> {
    // Everything is checked before anything changes.
    let manifest = read_manifest(opts.from, Contents::Data)?;
    let data_dir = cfg.data_dir();
    let mut plan = Vec::new();
    for target in Target::ALL {
        let name = format!("{target}.db");
        let dest = sqlite_path(cfg, target)?;
        plan.push(planned(opts.from, &manifest, &name, dest, true)?);
    }
    if manifest.files.iter().any(|f| f.name == MESH_KEY) {
        let dest = data_dir.join(MESH_KEY);
        let theirs =
            std::fs::read_to_string(opts.from.join(MESH_KEY)).context("failed to read the backup's mesh.key")?;
        if let Ok(ours) = std::fs::read_to_string(&dest)
            && ours.trim() != theirs.trim()
        {
            bail!(
                "{} differs from the backup's mesh key: pseudonyms, tombstones and signatures of this data dir do not \
                 belong to the backup; restore into an empty data dir (docs/backup.md)",
                dest.display()
            );
        }
        plan.push(planned(opts.from, &manifest, MESH_KEY, dest, false)?);
    }
    if let Some(f) = manifest.files.iter().find(|f| !plan.iter().any(|p| p.name == f.name)) {
        bail!("{}: unexpected file {} in the manifest", opts.from.join(MANIFEST).display(), f.name);
    }
    verify(opts.from, &manifest)?;
    let key_store = match opts.keys_from_opt {
        Some(dir) => {
            let keys = read_manifest(dir, Contents::KeyStore)?;
            if keys.backup_id != manifest.backup_id {
                bail!(
                    "{} holds the key store of backup {}, not of backup {}",
                    dir.display(),
                    keys.backup_id,
                    manifest.backup_id
                );
            }
            for f in &keys.files {
                if !KEY_STORE_FILES.contains(&f.name.as_str()) {
                    bail!("{}: unexpected file {} in the manifest", dir.join(MANIFEST).display(), f.name);
                }
                plan.push(planned(dir, &keys, &f.name, data_dir.join(&f.name), f.name == KEY_STORE_DB)?);
            }
            verify(dir, &keys)?;
            json!({"restored_from": dir, "files": keys.files.iter().map(|f| &f.name).collect::<Vec<_>>()})
        }
        None => json!(if key_store_files(&data_dir).is_empty() { "none" } else { "current kept" }),
    };
    // Carnet must be stopped: its connections hold every database open.
    let mut in_use = plan.iter().filter(|p| p.sqlite && p.dest.exists()).map(|p| p.dest.clone()).collect::<Vec<_>>();
    in_use.push(data_dir.join(KEY_STORE_DB));
    for path in in_use.iter().filter(|p| p.exists()) {
        ensure_unused(path).await?;
    }

    // The current DSAR state, kept aside (a file, so an interrupted restore can resume).
    let dsar = sqlite_path(cfg, Target::Dsar)?;
    let kept = dsar.with_file_name(KEPT_DSAR);
    let dsar_state = if opts.discard_current_dsar {
        remove_with_sidecars(&kept)?;
        "discarded"
    } else if kept.is_file() {
        "kept by an earlier restore that did not finish"
    } else if dsar.is_file() {
        let staging = dsar.with_file_name(format!("{KEPT_DSAR}.tmp"));
        remove_with_sidecars(&staging)?;
        vacuum_into(&dsar, &staging).await.with_context(|| {
            format!("failed to keep the DSAR state of {}; if it is lost, give --discard-current-dsar", dsar.display())
        })?;
        std::fs::rename(&staging, &kept).context("failed to keep the DSAR state")?;
        "kept"
    } else {
        bail!(
            "{} does not exist: without the current DSAR state the erasures done after the backup cannot be replayed; \
             give --discard-current-dsar to restore anyway (docs/backup.md)",
            dsar.display()
        );
    };

    // Stage every file beside its destination and check the copy, then swap them in.
    for p in &plan {
        let staging = staging_path(&p.dest);
        remove_with_sidecars(&staging)?;
        copy_private(&p.src, &staging)?;
        let (_, sha256) = sha256_of(&staging)?;
        if sha256 != p.sha256 {
            let _ = std::fs::remove_file(&staging);
            bail!("the copy of {} to {} is damaged (SHA-256 {sha256})", p.src.display(), staging.display());
        }
    }
    for p in &plan {
        // A stale WAL would be replayed into the restored file.
        remove_with_sidecars(&p.dest)?;
        std::fs::rename(staging_path(&p.dest), &p.dest)
            .with_context(|| format!("failed to replace {}", p.dest.display()))?;
        eprintln!("restored {} to {}", p.name, p.dest.display());
    }
    sync_dir(&data_dir);

    // The restored DSAR database at this version's schema, then the kept rows over it.
    node::open_database(cfg, Target::Dsar, true).await?.close().await;
    let merged = if kept.is_file() {
        let merged = merge_kept(&dsar, &kept).await?;
        remove_with_sidecars(&kept)?;
        json!(merged)
    } else {
        json!({})
    };

    let entries = read_ledger(&dsar, false).await?;
    let since = replay_since(&entries, manifest.created_at);
    let replay = replay(cfg, &dsar, &entries, since).await.with_context(|| {
        format!(
            "the files are restored but the erasure replay did not finish: start carnet and run \
             `carnet dsar replay-erasures --since {}`",
            since.to_rfc3339()
        )
    })?;
    Ok(json!({
        "restored_from": opts.from, "backup_id": manifest.backup_id, "backup_created_at": manifest.created_at,
        "files": plan.iter().map(|p| &p.name).collect::<Vec<_>>(), "key_store": key_store,
        "dsar_state": dsar_state, "dsar_rows_kept": merged, "replay": replay,
    }))
}

fn planned(dir: &Path, manifest: &Manifest, name: &str, dest: PathBuf, sqlite: bool) -> anyhow::Result<Restored> {
    let entry = manifest
        .files
        .iter()
        .find(|f| f.name == name)
        .ok_or_else(|| anyhow!("{}: the manifest lists no {name}", dir.join(MANIFEST).display()))?;
    Ok(Restored { name: name.into(), src: dir.join(name), dest, sha256: entry.sha256.clone(), sqlite })
}

/// Returns the time to replay from: the backup's start, or the request time of an erasure that
/// completed after it (or not yet), since the backup may hold part of that person's data.
fn replay_since(entries: &[ledger::Model], backup_at: DateTime<Utc>) -> DateTime<Utc> {
    entries
        .iter()
        .filter(|e| e.completed_at.is_none_or(|at| at >= backup_at))
        .map(|e| e.requested_at)
        .fold(backup_at, DateTime::min)
}

/// Starts the node's services in this process (no gateway, the embedded bus, loopback ports),
/// asks the DSAR service to replay the ledger for every tenant in it, and waits until every
/// participant has handled the events and the contacts store yields no ledger subject.
async fn replay(
    cfg: &CarnetConfig,
    dsar: &Path,
    entries: &[ledger::Model],
    since: DateTime<Utc>,
) -> anyhow::Result<Value> {
    let tenants: BTreeSet<Uuid> = entries.iter().filter(|e| e.requested_at >= since).map(|e| e.tenant_id).collect();
    if tenants.is_empty() {
        return Ok(json!({"since": since, "tenants": 0, "entries": 0, "matched": 0}));
    }
    let mut run = cfg.clone();
    run.grpc.listen_addr = "127.0.0.1:0".into();
    run.grpc.request_timeout_ms = run.grpc.request_timeout_ms.max(REPLAY_TIMEOUT.as_millis() as u64);
    run.bus.nats_url = String::new();
    if run.comms.public_url.is_empty() {
        // The links `carnet up` would put in a mail sent meanwhile.
        run.comms.public_url = format!("http://{}", cfg.gateway.listen_addr);
    }
    let targets: Vec<Target> = Target::ALL.into_iter().filter(|t| *t != Target::Gateway).collect();
    let node = node::start(&run, Mode::Monolith, &targets).await.context("failed to start the services")?;
    eprintln!("replaying the erasure ledger since {} ({} tenants)", since.to_rfc3339(), tenants.len());
    let res = replay_on(&node, dsar, &tenants, since).await;
    node.shutdown().await?;
    let (entries, matched) = res?;
    Ok(json!({"since": since, "tenants": tenants.len(), "entries": entries, "matched": matched}))
}

async fn replay_on(
    node: &carnet_cli::Node,
    dsar: &Path,
    tenants: &BTreeSet<Uuid>,
    since: DateTime<Utc>,
) -> anyhow::Result<(u64, u64)> {
    let channel = carnet_kit::grpc::endpoint(&format!("http://{}", node.grpc_addr))?.connect().await?;
    let deadline = Instant::now() + REPLAY_TIMEOUT;
    let mut outbox = SqliteConnectOptions::new().filename(dsar).read_only(true).connect().await?;
    let (entries, matched) = replay_round(&channel, &node.mesh_key, tenants, since).await?;
    let mut left = matched;
    while left > 0 {
        // The embedded bus marks an event published once every consumer of it succeeded.
        loop {
            let pending: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM outbox WHERE kind = 'erasure.requested' AND published_at IS NULL",
            )
            .fetch_one(&mut outbox)
            .await?;
            if pending == 0 {
                break;
            }
            if Instant::now() > deadline {
                bail!("{pending} erasure events are still waiting for a participant");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // A second pass must find nobody: it proves the erasures took place (and asks again if not).
        left = replay_round(&channel, &node.mesh_key, tenants, since).await?.1;
        if left > 0 && Instant::now() > deadline {
            bail!("{left} subjects of the ledger are still in the contacts store");
        }
    }
    outbox.close().await?;
    Ok((entries, matched))
}

async fn replay_round(
    channel: &tonic::transport::Channel,
    key: &carnet_kit::MeshKey,
    tenants: &BTreeSet<Uuid>,
    since: DateTime<Utc>,
) -> anyhow::Result<(u64, u64)> {
    use carnet_proto::dsar::v1::ReplayErasuresRequest;
    use carnet_proto::dsar::v1::dsar_service_client::DsarServiceClient;
    let (mut entries, mut matched) = (0, 0);
    for tenant_id in tenants {
        let caller = carnet_kit::Caller::new(*tenant_id, "cli:restore", [carnet_kit::Permission::DsarManage]);
        let mut client =
            DsarServiceClient::with_interceptor(channel.clone(), carnet_kit::CallerSigner::new(key.clone(), caller));
        let req = ReplayErasuresRequest { since: Some(carnet_kit::grpc::to_timestamp(since)) };
        let r = client
            .replay_erasures(req)
            .await
            .map_err(|s| anyhow!("replay for tenant {tenant_id}: {}", s.message()))?
            .into_inner();
        entries += r.entries;
        matched += r.matched;
    }
    Ok((entries, matched))
}

/// Writes the kept DSAR rows over the restored ones (the kept row wins), table by table, in one
/// transaction; returns per table the rows kept and how many of them the backup lacked. The
/// outbox stays as restored: its events belong to the life being rolled back.
async fn merge_kept(dsar: &Path, kept: &Path) -> anyhow::Result<BTreeMap<String, Value>> {
    let mut conn = SqliteConnectOptions::new().filename(dsar).busy_timeout(Duration::from_secs(30)).connect().await?;
    sqlx::query("ATTACH DATABASE ? AS kept").bind(utf8(kept)?).execute(&mut conn).await?;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM kept.sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         AND name NOT LIKE 'seaql_migrations%' AND name <> 'outbox' ORDER BY name",
    )
    .fetch_all(&mut conn)
    .await?;
    let mut out = BTreeMap::new();
    let mut tx = conn.begin().await?;
    for table in tables {
        let ours = columns(&mut tx, "main", &table).await?;
        let theirs = columns(&mut tx, "kept", &table).await?;
        let mut pk: Vec<(i64, String)> = ours.iter().filter(|(_, k)| *k > 0).map(|(c, k)| (*k, quote(c))).collect();
        pk.sort();
        let pk: Vec<String> = pk.into_iter().map(|(_, c)| c).collect();
        if pk.is_empty() {
            // Unknown to this version, or without a key to match rows by.
            continue;
        }
        let shared: Vec<String> =
            ours.iter().filter(|(c, _)| theirs.iter().any(|(t, _)| t == c)).map(|(c, _)| quote(c)).collect();
        let t = quote(&table);
        let same = pk.iter().map(|c| format!("m.{c} = k.{c}")).collect::<Vec<_>>().join(" AND ");
        let added: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM kept.{t} AS k WHERE NOT EXISTS (SELECT 1 FROM main.{t} AS m WHERE {same})"
        )))
        .fetch_one(&mut *tx)
        .await?;
        let updates: Vec<String> =
            shared.iter().filter(|c| !pk.contains(c)).map(|c| format!("{c} = excluded.{c}")).collect();
        let action =
            if updates.is_empty() { "NOTHING".to_string() } else { format!("UPDATE SET {}", updates.join(", ")) };
        let list = shared.join(", ");
        let sql = format!(
            "INSERT INTO main.{t} ({list}) SELECT {list} FROM kept.{t} WHERE true ON CONFLICT ({}) DO {action}",
            pk.join(", ")
        );
        let rows = sqlx::query(AssertSqlSafe(sql)).execute(&mut *tx).await?.rows_affected();
        out.insert(table, json!({"rows": rows, "added": added}));
    }
    tx.commit().await?;
    sqlx::query("DETACH DATABASE kept").execute(&mut conn).await?;
    conn.close().await?;
    Ok(out)
}

/// The columns of `schema.table` with their primary-key position (0: not in the key).
async fn columns(conn: &mut SqliteConnection, schema: &str, table: &str) -> anyhow::Result<Vec<(String, i64)>> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT name, pk FROM pragma_table_info(?, ?)").bind(table).bind(schema).fetch_all(conn).await?;
    Ok(rows)
}

fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// Refuses when another connection has `path` open. Every connection to a WAL database holds a
/// shared lock on the file while it is open, and one in exclusive locking mode needs the
/// exclusive lock for its first read.
async fn ensure_unused(path: &Path) -> anyhow::Result<()> {
    let probe = async {
        let mut conn = SqliteConnectOptions::new()
            .filename(path)
            .locking_mode(SqliteLockingMode::Exclusive)
            .busy_timeout(Duration::from_millis(500))
            .connect()
            .await?;
        sqlx::query("SELECT COUNT(*) FROM sqlite_master").execute(&mut conn).await?;
        conn.close().await
    };
    match probe.await {
        Ok(()) => Ok(()),
        Err(sqlx::Error::Database(e))
            if e.code().and_then(|c| c.parse::<i32>().ok()).is_some_and(|c| matches!(c & 0xff, 5 | 6)) =>
        {
            bail!("{} is in use by another process: stop carnet before restoring", path.display())
        }
        Err(e) => Err(e).with_context(|| format!("failed to open {}", path.display())),
    }
}

/// A consistent copy of the database at `src`, through a connection (Carnet may be writing).
async fn vacuum_into(src: &Path, dest: &Path) -> anyhow::Result<()> {
    let mut conn = SqliteConnectOptions::new()
        .filename(src)
        .busy_timeout(Duration::from_secs(30))
        .connect()
        .await
        .with_context(|| format!("failed to open {}", src.display()))?;
    sqlx::query("VACUUM INTO ?")
        .bind(utf8(dest)?)
        .execute(&mut conn)
        .await
        .with_context(|| format!("failed to copy {} to {}", src.display(), dest.display()))?;
    conn.close().await?;
    make_private(dest)
}

/// Every entry of the erasure ledger in the DSAR database at `path` (`immutable`: a backup file,
/// read without locks or journal).
async fn read_ledger(path: &Path, immutable: bool) -> anyhow::Result<Vec<ledger::Model>> {
    let opts = SqliteConnectOptions::new().filename(path).read_only(true).immutable(immutable);
    let pool = SqlitePoolOptions::new().max_connections(1).connect_with(opts).await?;
    let db = sea_orm::SqlxSqliteConnector::from_sqlx_sqlite_pool(pool);
    let entries = ledger::Entity::find()
        .all(&db)
        .await
        .with_context(|| format!("failed to read the erasure ledger of {}", path.display()))?;
    db.close().await?;
    Ok(entries)
}

/// The SQLite file of a target's database; PostgreSQL databases are backed up with pg_dump.
fn sqlite_path(cfg: &CarnetConfig, target: Target) -> anyhow::Result<PathBuf> {
    let (url, _) = node::database_url(cfg, target)?;
    sqlite_file(&url).ok_or_else(|| {
        anyhow!(
            "the {target} database is not SQLite ({target}.database_url): use pg_dump and pg_restore (docs/backup.md)"
        )
    })
}

fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite:")?.trim_start_matches("//");
    Some(PathBuf::from(rest.split('?').next().unwrap_or(rest)))
}

/// The key store's files present in the data dir.
fn key_store_files(data_dir: &Path) -> Vec<String> {
    KEY_STORE_FILES.iter().filter(|n| data_dir.join(n).is_file()).map(|n| n.to_string()).collect()
}

fn read_manifest(dir: &Path, contents: Contents) -> anyhow::Result<Manifest> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("failed to read {} (an unfinished or missing backup?)", path.display()))?;
    let manifest: Manifest = serde_json::from_str(&text).with_context(|| format!("{} is not valid", path.display()))?;
    if manifest.format != FORMAT {
        bail!("{}: format {} is not {FORMAT}", path.display(), manifest.format);
    }
    if manifest.contents != contents {
        let what = if contents == Contents::Data { "--from" } else { "--keys-from" };
        bail!("{}: this directory does not fit {what} (it holds {:?})", path.display(), manifest.contents);
    }
    if version(&manifest.carnet_version) > version(env!("CARGO_PKG_VERSION")) {
        bail!(
            "{}: the backup comes from carnet {}, newer than this carnet {}",
            path.display(),
            manifest.carnet_version,
            env!("CARGO_PKG_VERSION")
        );
    }
    Ok(manifest)
}

fn version(text: &str) -> Vec<u64> {
    text.split(['.', '-', '+']).take(3).map(|p| p.parse().unwrap_or(0)).collect()
}

/// Checks every file of the manifest (size and SHA-256) before anything is overwritten.
fn verify(dir: &Path, manifest: &Manifest) -> anyhow::Result<()> {
    for f in &manifest.files {
        let path = dir.join(&f.name);
        let (bytes, sha256) = sha256_of(&path)?;
        if bytes != f.bytes || sha256 != f.sha256 {
            bail!(
                "{} does not match the manifest ({bytes} bytes, SHA-256 {sha256}; expected {} bytes, {}): \
                 refusing to restore, nothing was changed",
                path.display(),
                f.bytes,
                f.sha256
            );
        }
    }
    Ok(())
}

fn entries(dir: &Path, names: &[String]) -> anyhow::Result<Vec<FileEntry>> {
    names
        .iter()
        .map(|name| {
            let (bytes, sha256) = sha256_of(&dir.join(name))?;
            Ok(FileEntry { name: name.clone(), bytes, sha256 })
        })
        .collect()
}

fn sha256_of(path: &Path) -> anyhow::Result<(u64, String)> {
    let mut file = std::fs::File::open(path).with_context(|| format!("failed to read {}", path.display()))?;
    let (mut hasher, mut buf, mut total) = (Sha256::new(), vec![0u8; 1 << 16], 0u64);
    loop {
        let n = file.read(&mut buf).with_context(|| format!("failed to read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((total, hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()))
}

/// Writes the manifest last and atomically: a directory without one is no backup.
fn write_manifest(dir: &Path, manifest: &Manifest) -> anyhow::Result<()> {
    let staging = dir.join(format!("{MANIFEST}.tmp"));
    std::fs::write(&staging, serde_json::to_vec_pretty(manifest)?).context("failed to write the manifest")?;
    make_private(&staging)?;
    std::fs::rename(&staging, dir.join(MANIFEST)).context("failed to write the manifest")?;
    sync_dir(dir);
    Ok(())
}

fn check_empty(dir: &Path, flag: &str) -> anyhow::Result<()> {
    if dir.exists()
        && std::fs::read_dir(dir).with_context(|| format!("{flag}: cannot read {}", dir.display()))?.next().is_some()
    {
        bail!("{flag}: {} is not empty (each backup goes to a new directory)", dir.display());
    }
    Ok(())
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

fn copy_private(src: &Path, dest: &Path) -> anyhow::Result<()> {
    std::fs::copy(src, dest).with_context(|| format!("failed to copy {} to {}", src.display(), dest.display()))?;
    make_private(dest)
}

/// Readable by the owner only, and on disk.
fn make_private(path: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    std::fs::File::open(path)?.sync_all().with_context(|| format!("failed to sync {}", path.display()))
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

fn staging_path(dest: &Path) -> PathBuf {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dest.with_file_name(format!("{name}.restore-tmp"))
}

/// Removes a SQLite file with its WAL, shared-memory and rollback journal files.
fn remove_with_sidecars(path: &Path) -> anyhow::Result<()> {
    let base = path.as_os_str().to_owned();
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = base.clone();
        p.push(suffix);
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("failed to remove {}", Path::new(&p).display()));
            }
            _ => {}
        }
    }
    Ok(())
}

fn utf8(path: &Path) -> anyhow::Result<&str> {
    path.to_str().ok_or_else(|| anyhow!("{} is not a UTF-8 path", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(requested: &str, completed_opt: Option<&str>) -> ledger::Model {
        ledger::Model {
            tenant_id: Uuid::nil(),
            request_id: Uuid::now_v7(),
            subject_pseudonym: "p".into(),
            participants: json!(["contacts"]),
            removed: json!({}),
            requested_at: requested.parse().unwrap(),
            completed_at: completed_opt.map(|c| c.parse().unwrap()),
        }
    }

    #[test]
    fn test_replay_since_reaches_back_to_erasures_the_backup_caught_midway() {
        let backup_at: DateTime<Utc> = "2026-11-29T10:00:00Z".parse().unwrap();
        let done_before = entry("2026-11-29T09:00:00Z", Some("2026-11-29T09:00:01Z"));
        let after = entry("2026-11-29T11:00:00Z", Some("2026-11-29T11:00:01Z"));
        assert_eq!(replay_since(&[done_before.clone(), after.clone()], backup_at), backup_at);
        let midway = entry("2026-11-29T09:59:59Z", Some("2026-11-29T10:00:02Z"));
        let open = entry("2026-11-28T08:00:00Z", None);
        assert_eq!(replay_since(&[done_before.clone(), midway.clone(), after], backup_at), midway.requested_at);
        assert_eq!(replay_since(&[done_before, midway, open.clone()], backup_at), open.requested_at);
        assert_eq!(replay_since(&[], backup_at), backup_at);
    }

    #[test]
    fn test_sqlite_file_of_the_urls_carnet_writes() {
        assert_eq!(
            sqlite_file("sqlite://./carnet-data/contacts.db?mode=rwc"),
            Some("./carnet-data/contacts.db".into())
        );
        assert_eq!(sqlite_file("sqlite:///var/lib/carnet/dsar.db"), Some("/var/lib/carnet/dsar.db".into()));
        assert_eq!(sqlite_file("postgres://carnet@db/contacts"), None);
    }

    #[test]
    fn test_versions_compare_numerically() {
        assert!(version("0.10.0") > version("0.9.3"));
        assert!(version("1.0.0-rc.1") <= version("1.0.0"));
    }
}
