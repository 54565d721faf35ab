//! `carnet`: one binary, two modes. `carnet up` runs every target in one process on SQLite;
//! `carnet serve --target T` runs the named targets on their configured databases.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use carnet_cli::node::{self, Mode};
use carnet_cli::{CarnetConfig, Target};

mod backup;
mod export;

#[derive(Parser, Debug)]
#[command(name = "carnet", version, about = "Carnet, the GDPR-first CRM platform")]
struct Cli {
    /// Configuration file (TOML); CARNET__SECTION__KEY environment variables override it.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs every target in one process on SQLite (no external service needed).
    Up {
        /// Where the SQLite databases and generated keys live.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<String>,
        /// The gRPC listen address.
        #[arg(long, value_name = "HOST:PORT")]
        grpc_addr: Option<String>,
        /// The HTTP (REST gateway) listen address.
        #[arg(long, value_name = "HOST:PORT")]
        http_addr: Option<String>,
    },
    /// Runs the named targets (split mode).
    Serve {
        #[arg(long = "target", required = true, value_name = "TARGET")]
        targets: Vec<Target>,
    },
    /// Runs the migrations of the named (default: all) services and exits.
    Migrate {
        #[arg(long = "target", value_name = "TARGET")]
        targets: Vec<Target>,
        #[arg(long, value_name = "DIR")]
        data_dir: Option<String>,
    },
    /// Copies every embedded database (a consistent snapshot; carnet may be running), the mesh
    /// key and a manifest into a new directory (docs/backup.md). Prints what it wrote.
    Backup {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Where the key store (keys.db and its master key) goes; never beside --out.
        #[arg(long, value_name = "DIR")]
        keys_out: Option<PathBuf>,
        /// Leaves the key store out: restoring then relies on the key store of the data dir.
        #[arg(long, conflicts_with = "keys_out")]
        without_keys: bool,
        #[arg(long, value_name = "DIR")]
        data_dir: Option<String>,
    },
    /// Restores a backup into the data dir (carnet stopped), keeps the current DSAR state and
    /// erases again every person erased since the backup. Prints what it restored and replayed.
    Restore {
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        /// The key store copied with that backup (`--keys-out`); default: keep the current one.
        #[arg(long, value_name = "DIR")]
        keys_from: Option<PathBuf>,
        /// Restores although the data dir has no readable dsar.db: erasures done after the
        /// backup are then not replayed.
        #[arg(long)]
        discard_current_dsar: bool,
        #[arg(long, value_name = "DIR")]
        data_dir: Option<String>,
    },
    /// Tenant commands.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// API key commands.
    Apikey {
        #[command(subcommand)]
        command: ApikeyCommand,
    },
    /// Data subject request commands.
    Dsar {
        #[command(subcommand)]
        command: DsarCommand,
    },
    /// Bulk import through the gateway (docs/import.md).
    Import {
        #[command(subcommand)]
        command: Box<ImportCommand>,
    },
    /// Key store commands (crypto-shredding, docs/crypto.md).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Commands for plugin authors.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Bulk export through the gateway (docs/export.md).
    Export {
        #[command(subcommand)]
        command: export::ExportCommand,
    },
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand, Debug)]
enum TenantCommand {
    /// Creates a tenant and prints `{"tenant_id", "api_key"}`; the key has the owner role.
    Create {
        name: String,
        #[arg(long, value_name = "DIR")]
        data_dir: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum ApikeyCommand {
    /// Creates an API key for a tenant and prints `{"api_key"}`; the key is shown once.
    Create {
        #[arg(long, value_name = "TENANT_ID")]
        tenant: String,
        #[arg(long, value_name = "ROLE")]
        role: carnet_gateway::roles::Role,
        #[arg(long, default_value = "")]
        label: String,
        #[arg(long, value_name = "DIR")]
        data_dir: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum DsarCommand {
    /// After a backup restore: erases again every subject the erasure ledger names (requested
    /// since TIME), in every tenant or the one given. Prints `{"tenants", "entries", "matched"}`.
    ReplayErasures {
        /// RFC 3339 time, e.g. 2026-11-01T00:00:00Z: the backup's time.
        #[arg(long, value_name = "TIME")]
        since: String,
        #[arg(long, value_name = "TENANT_ID")]
        tenant: Option<String>,
        /// The DSAR service; default: this node's gRPC address (`grpc.listen_addr`).
        #[arg(long, value_name = "URL")]
        endpoint: Option<String>,
        #[arg(long, value_name = "DIR")]
        data_dir: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum ImportCommand {
    /// Imports contacts from a CSV (header row) or JSON-lines file, with a progress bar; prints
    /// the counts and saves the per-line report. Every row is checked like a single create.
    Contacts {
        file: PathBuf,
        /// The gateway, e.g. http://127.0.0.1:8080.
        #[arg(long, env = "CARNET_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        #[arg(long, env = "CARNET_API_KEY", hide_env_values = true)]
        api_key: String,
        /// `csv` or `jsonl`; default: from the file name.
        #[arg(long)]
        format: Option<String>,
        /// COLUMN=FIELD (repeatable; FIELD empty ignores the column). Default: columns are fields.
        #[arg(long = "map", value_name = "COLUMN=FIELD")]
        map: Vec<String>,
        /// The lawful basis: consent, contract, legal_obligation, vital_interests, public_task,
        /// legitimate_interests.
        #[arg(long)]
        basis: String,
        /// A consent purpose the basis covers (repeatable; required for consent).
        #[arg(long = "purpose")]
        purposes: Vec<String>,
        /// Consent: when it was given (RFC 3339).
        #[arg(long)]
        collected_at: Option<String>,
        /// Consent: where it was given.
        #[arg(long, default_value = "")]
        collected_where: String,
        /// Consent: the notice version shown…
        #[arg(long, default_value_t = 0)]
        notice_version: u32,
        /// …or the notice text.
        #[arg(long, default_value = "")]
        notice_text: String,
        /// Another basis: why it applies.
        #[arg(long, default_value = "")]
        justification: String,
        /// skip, update or fail.
        #[arg(long, default_value = "skip")]
        on_duplicate: String,
        /// Import people erased on request anyway, for this reason (audited).
        #[arg(long, default_value = "")]
        erasure_override: String,
        /// Upload the same file into this interrupted import.
        #[arg(long, value_name = "IMPORT_ID")]
        resume: Option<String>,
        /// Where to save the report; default: beside the file.
        #[arg(long)]
        report: Option<PathBuf>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Rotates tenant keys: a new version wraps every subject key from now on, existing subject
    /// keys are rewrapped under it, unused versions are removed. Safe while Carnet runs.
    Rotate {
        /// One tenant; default: every tenant.
        #[arg(long, value_name = "ID")]
        tenant: Option<String>,
        #[arg(long, value_name = "DIR")]
        data_dir: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum PluginCommand {
    /// Checks a plugin (a component, or a core module built with wit-bindgen) against the
    /// `carnet:enricher` world and its manifest; prints what it reads, writes and may call.
    Check {
        file: PathBuf,
        /// Default: `carnet-plugin.toml` beside FILE, or in the directories above it.
        #[arg(long, value_name = "TOML")]
        manifest: Option<PathBuf>,
    },
    /// Runs a plugin once on `--input` (a JSON object of field values) within the default
    /// limits, and prints its updates.
    Run {
        file: PathBuf,
        #[arg(long, value_name = "JSON")]
        input: String,
        #[arg(long, value_name = "TOML")]
        manifest: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Prints the effective configuration with secrets redacted.
    Show,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: failed to start the runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Reads a plugin and its manifest (given, or `carnet-plugin.toml` beside the file or above it).
fn load_plugin(
    file: &std::path::Path,
    manifest_opt: Option<PathBuf>,
) -> anyhow::Result<(carnet_plugin_host::Host, carnet_plugin_host::Plugin)> {
    use anyhow::Context as _;
    let bytes = std::fs::read(file).with_context(|| format!("failed to read {}", file.display()))?;
    let manifest_path = match manifest_opt {
        Some(p) => p,
        None => file
            .ancestors()
            .skip(1)
            .map(|d| d.join("carnet-plugin.toml"))
            .find(|p| p.exists())
            .ok_or_else(|| anyhow::anyhow!("no carnet-plugin.toml beside {} (give --manifest)", file.display()))?,
    };
    let text = std::fs::read_to_string(&manifest_path)
        .with_context(|| format!("failed to read {}", manifest_path.display()))?;
    let manifest =
        carnet_plugin_host::Manifest::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", manifest_path.display()))?;
    let component = carnet_plugin_host::componentize(&bytes)?;
    let host = carnet_plugin_host::Host::new(carnet_plugin_host::Limits::default()).map_err(anyhow::Error::msg)?;
    let plugin = host.load(manifest, &component)?;
    Ok((host, plugin))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config_path = cli.config.as_deref();
    match cli.command {
        Command::Up { data_dir, grpc_addr, http_addr } => {
            let mut overrides = Vec::new();
            if let Some(dir) = data_dir {
                overrides.push(("node.data_dir", dir));
            }
            if let Some(addr) = grpc_addr {
                overrides.push(("grpc.listen_addr", addr));
            }
            if let Some(addr) = http_addr {
                overrides.push(("gateway.listen_addr", addr));
            }
            let cfg = CarnetConfig::load(config_path, &overrides)?;
            let _telemetry = carnet_kit::telemetry::init(&cfg.telemetry)?;
            let stop = shutdown_signal()?;
            let node = node::start(&cfg, Mode::Monolith, &Target::ALL).await?;
            eprintln!(
                "carnet is up: HTTP on {} gRPC on {} (targets: {}), data in {}",
                node.http_addr_opt.map_or("-".to_string(), |a| a.to_string()),
                node.grpc_addr,
                target_list(&node.targets),
                cfg.data_dir().display()
            );
            if let Some(note) = &node.mail_note_opt {
                eprintln!("{note}");
            }
            node.run_until(stop).await
        }
        Command::Serve { targets } => {
            let cfg = CarnetConfig::load(config_path, &[])?;
            let _telemetry = carnet_kit::telemetry::init(&cfg.telemetry)?;
            let stop = shutdown_signal()?;
            let node = node::start(&cfg, Mode::Split, &targets).await?;
            eprintln!(
                "carnet is serving: HTTP on {} gRPC on {} (targets: {})",
                node.http_addr_opt.map_or("-".to_string(), |a| a.to_string()),
                node.grpc_addr,
                target_list(&node.targets)
            );
            node.run_until(stop).await
        }
        Command::Migrate { targets, data_dir } => {
            let overrides: Vec<(&str, String)> = data_dir.into_iter().map(|d| ("node.data_dir", d)).collect();
            let cfg = CarnetConfig::load(config_path, &overrides)?;
            let targets = if targets.is_empty() { Target::ALL.to_vec() } else { targets };
            for target in targets {
                let db = node::open_database(&cfg, target, true).await?;
                db.close().await;
                println!("{target}: migrations applied");
            }
            Ok(())
        }
        Command::Backup { out, keys_out, without_keys, data_dir } => {
            let overrides: Vec<(&str, String)> = data_dir.into_iter().map(|d| ("node.data_dir", d)).collect();
            let cfg = CarnetConfig::load(config_path, &overrides)?;
            println!("{}", backup::backup(&cfg, &out, keys_out.as_deref(), without_keys).await?);
            Ok(())
        }
        Command::Restore { from, keys_from, discard_current_dsar, data_dir } => {
            let overrides: Vec<(&str, String)> = data_dir.into_iter().map(|d| ("node.data_dir", d)).collect();
            let cfg = CarnetConfig::load(config_path, &overrides)?;
            let opts =
                backup::RestoreOptions { from: &from, keys_from_opt: keys_from.as_deref(), discard_current_dsar };
            println!("{}", backup::restore(&cfg, opts).await?);
            Ok(())
        }
        Command::Dsar { command: DsarCommand::ReplayErasures { since, tenant, endpoint, data_dir } } => {
            use anyhow::Context as _;
            use carnet_proto::dsar::v1::ReplayErasuresRequest;
            use carnet_proto::dsar::v1::dsar_service_client::DsarServiceClient;
            let since: chrono::DateTime<chrono::Utc> = since
                .parse()
                .map_err(|_| anyhow::anyhow!("--since must be an RFC 3339 time, e.g. 2026-11-01T00:00:00Z"))?;
            let overrides: Vec<(&str, String)> = data_dir.clone().into_iter().map(|d| ("node.data_dir", d)).collect();
            let cfg = CarnetConfig::load(config_path, &overrides)?;
            let mode = if cfg.mesh.signing_key.is_empty() { Mode::Monolith } else { Mode::Split };
            let key = node::mesh_key(&cfg, mode)?;
            let tenants: Vec<uuid::Uuid> = match tenant {
                Some(t) => vec![t.parse().map_err(|_| anyhow::anyhow!("--tenant must be a tenant id"))?],
                None => key_store(config_path, data_dir).await?.tenant_ids().await?,
            };
            let url = endpoint.unwrap_or_else(|| format!("http://{}", cfg.grpc.listen_addr));
            let channel =
                carnet_kit::grpc::endpoint(&url)?.connect().await.with_context(|| format!("cannot reach {url}"))?;
            let (mut entries, mut matched) = (0, 0);
            for tenant_id in &tenants {
                let caller =
                    carnet_kit::Caller::new(*tenant_id, "cli:dsar-replay", [carnet_kit::Permission::DsarManage]);
                let mut client = DsarServiceClient::with_interceptor(
                    channel.clone(),
                    carnet_kit::CallerSigner::new(key.clone(), caller),
                );
                let req = ReplayErasuresRequest { since: Some(carnet_kit::grpc::to_timestamp(since)) };
                let r = client.replay_erasures(req).await.map_err(|s| anyhow::anyhow!("{}", s.message()))?.into_inner();
                entries += r.entries;
                matched += r.matched;
            }
            println!("{}", serde_json::json!({"tenants": tenants.len(), "entries": entries, "matched": matched}));
            Ok(())
        }
        Command::Import { command } => {
            let ImportCommand::Contacts {
                file,
                url,
                api_key,
                format,
                map,
                basis,
                purposes,
                collected_at,
                collected_where,
                notice_version,
                notice_text,
                justification,
                on_duplicate,
                erasure_override,
                resume,
                report,
                quiet,
            } = *command;
            let args = carnet_cli::import::ImportArgs {
                file,
                url,
                api_key,
                format,
                map,
                basis,
                purposes,
                collected_at,
                collected_where,
                notice_version,
                notice_text,
                justification,
                on_duplicate,
                erasure_override,
                resume,
                report,
                quiet,
            };
            carnet_cli::import::run(args).await
        }
        Command::Keys { command: KeysCommand::Rotate { tenant, data_dir } } => {
            let overrides: Vec<(&str, String)> = data_dir.clone().into_iter().map(|d| ("node.data_dir", d)).collect();
            let cfg = CarnetConfig::load(config_path, &overrides)?;
            let mode = if cfg.mesh.signing_key.is_empty() { Mode::Monolith } else { Mode::Split };
            let tenants: Vec<uuid::Uuid> = match tenant {
                Some(t) => vec![t.parse().map_err(|_| anyhow::anyhow!("--tenant must be a tenant id"))?],
                None => key_store(config_path, data_dir).await?.tenant_ids().await?,
            };
            let keys = node::open_key_store(&cfg, mode, mode == Mode::Monolith).await?;
            for tenant_id in tenants {
                let r = keys
                    .rotate_tenant_key(tenant_id)
                    .await
                    .map_err(|e| anyhow::anyhow!("tenant {tenant_id}: rotation failed: {e}"))?;
                let line = serde_json::json!({"tenant": tenant_id, "version": r.version, "rewrapped": r.rewrapped,
                    "removed_versions": r.removed});
                println!("{line}");
            }
            Ok(())
        }
        Command::Plugin { command } => {
            let (file, manifest_opt, input_opt) = match command {
                PluginCommand::Check { file, manifest } => (file, manifest, None),
                PluginCommand::Run { file, input, manifest } => (file, manifest, Some(input)),
            };
            let (host, plugin) = load_plugin(&file, manifest_opt)?;
            let m = &plugin.manifest;
            let Some(input) = input_opt else {
                println!(
                    "{}",
                    serde_json::json!({"plugin": m.id(), "api_version": m.api_version, "reads": m.reads,
                        "writes": m.writes, "profiling": m.profiling, "hosts": m.hosts, "categories": m.categories,
                        "purposes": m.purposes})
                );
                return Ok(());
            };
            let values: std::collections::BTreeMap<String, serde_json::Value> =
                serde_json::from_str(&input).map_err(|e| anyhow::anyhow!("--input must be a JSON object: {e}"))?;
            let fields = values
                .into_iter()
                .map(|(k, v)| (k, v.as_str().map_or_else(|| v.to_string(), str::to_string)))
                .collect();
            match host.run(&plugin, &fields) {
                Ok((updates, report)) => {
                    let updates: serde_json::Map<String, serde_json::Value> =
                        updates.into_iter().map(|(k, v)| (k, serde_json::Value::String(v))).collect();
                    println!(
                        "{}",
                        serde_json::json!({"plugin": m.id(), "updates": updates, "read": report.read,
                            "log_lines": report.log_lines})
                    );
                    Ok(())
                }
                Err(e) => anyhow::bail!("the run failed: {e}"),
            }
        }
        Command::Tenant { command: TenantCommand::Create { name, data_dir } } => {
            let keys = key_store(config_path, data_dir).await?;
            let (tenant_id, api_key) =
                keys.create_tenant(&name, "cli").await.map_err(|e| anyhow::anyhow!("{}", e.message))?;
            println!("{}", serde_json::json!({"tenant_id": tenant_id, "api_key": api_key}));
            Ok(())
        }
        Command::Apikey { command: ApikeyCommand::Create { tenant, role, label, data_dir } } => {
            let tenant_id =
                uuid::Uuid::parse_str(&tenant).map_err(|_| anyhow::anyhow!("--tenant: is not a tenant id"))?;
            let keys = key_store(config_path, data_dir).await?;
            let (key_id, api_key) =
                keys.create_key(tenant_id, role, &label, "cli").await.map_err(|e| anyhow::anyhow!("{}", e.message))?;
            println!("{}", serde_json::json!({"api_key": api_key, "id": key_id, "role": role.as_str()}));
            Ok(())
        }
        Command::Export { command } => export::run(command).await,
        Command::Config { command: ConfigCommand::Show } => {
            let cfg = CarnetConfig::load(config_path, &[])?;
            print!("{}", carnet_kit::config::redacted_toml(&cfg));
            Ok(())
        }
    }
}

/// Opens the gateway's tenants-and-keys database (migrating a local SQLite one).
async fn key_store(
    config_path: Option<&std::path::Path>,
    data_dir: Option<String>,
) -> anyhow::Result<carnet_gateway::keys::KeyStore> {
    let overrides: Vec<(&str, String)> = data_dir.into_iter().map(|d| ("node.data_dir", d)).collect();
    let cfg = CarnetConfig::load(config_path, &overrides)?;
    let local = cfg.gateway.database_url.is_empty();
    let db = node::open_database(&cfg, Target::Gateway, local).await?;
    Ok(carnet_gateway::keys::KeyStore::new(db))
}

fn target_list(targets: &[Target]) -> String {
    targets.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ")
}

/// Registers the SIGINT and SIGTERM handlers now (before the node announces itself, so a signal
/// sent right after start is a graceful stop, not a kill) and returns the future that resolves
/// on the first of them.
#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use anyhow::Context as _;
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("failed to install the SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("failed to install the SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = terminate.recv() => {},
        }
        tracing::info!("shutting down");
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
    })
}
