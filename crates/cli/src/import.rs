//! `carnet import contacts FILE`: creates an import job through the gateway with its terms,
//! streams the file into it with a progress bar (rows and bytes processed, rate, ETA), prints
//! the outcome counts and saves the per-line report. `--resume ID` uploads the same file into
//! an interrupted import: the lines already processed are skipped by the service.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::api::Api;

/// What `carnet import contacts` was asked.
#[derive(Debug, Default)]
pub struct ImportArgs {
    pub file: PathBuf,
    pub url: String,
    pub api_key: String,
    pub format: Option<String>,
    pub map: Vec<String>,
    pub basis: String,
    pub purposes: Vec<String>,
    pub collected_at: Option<String>,
    pub collected_where: String,
    pub notice_version: u32,
    pub notice_text: String,
    pub justification: String,
    pub on_duplicate: String,
    pub erasure_override: String,
    pub resume: Option<String>,
    pub report: Option<PathBuf>,
    pub quiet: bool,
}

fn format_of(args: &ImportArgs) -> anyhow::Result<String> {
    if let Some(f) = &args.format {
        return Ok(f.clone());
    }
    match args.file.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("csv") => Ok("csv".into()),
        Some("jsonl") | Some("ndjson") => Ok("jsonl".into()),
        _ => bail!("cannot tell the format from the file name: pass --format csv or --format jsonl"),
    }
}

/// The job's terms as the API takes them.
pub fn terms(args: &ImportArgs) -> anyhow::Result<serde_json::Value> {
    let mut mapping = serde_json::Map::new();
    for m in &args.map {
        let (column, field) = m
            .split_once('=')
            .with_context(|| format!("--map `{m}`: write COLUMN=FIELD (FIELD empty to ignore the column)"))?;
        mapping.insert(column.trim().to_string(), serde_json::Value::String(field.trim().to_string()));
    }
    let file_name = args.file.file_name().and_then(|n| n.to_str()).unwrap_or("import").to_string();
    let mut evidence = serde_json::json!({
        "collected_where": args.collected_where,
        "notice_version": args.notice_version,
        "notice_text": args.notice_text,
        "justification": args.justification,
    });
    if let Some(at) = &args.collected_at {
        let at: chrono::DateTime<chrono::Utc> = at
            .parse()
            .map_err(|_| anyhow::anyhow!("--collected-at must be an RFC 3339 time, e.g. 2026-11-01T09:00:00Z"))?;
        evidence["collected_at"] = serde_json::json!(at);
    }
    Ok(serde_json::json!({
        "file_name": file_name,
        "format": format_of(args)?,
        "mapping": mapping,
        "lawful_basis": args.basis,
        "purposes": args.purposes,
        "evidence": evidence,
        "on_duplicate": args.on_duplicate,
        "erasure_override_reason": args.erasure_override,
    }))
}

/// One line of progress: `[#####-----]  48%  24.0/50.0 MB  120,000 rows  21,345 rows/s  ETA 0:12`.
pub fn progress_line(done_bytes: u64, total_bytes: u64, rows: u64, elapsed: Duration) -> String {
    let frac = if total_bytes == 0 { 1.0 } else { (done_bytes as f64 / total_bytes as f64).min(1.0) };
    let width = 24;
    let filled = (frac * width as f64).round() as usize;
    let secs = elapsed.as_secs_f64().max(1e-3);
    let rate = rows as f64 / secs;
    let eta = if done_bytes == 0 || frac >= 1.0 {
        "--:--".to_string()
    } else {
        let left = secs * (1.0 - frac) / frac;
        format!("{}:{:02}", (left as u64) / 60, (left as u64) % 60)
    };
    format!(
        "[{}{}] {:>3.0}%  {:.1}/{:.1} MB  {} rows  {:.0} rows/s  ETA {eta}",
        "#".repeat(filled),
        "-".repeat(width - filled),
        frac * 100.0,
        done_bytes as f64 / 1e6,
        total_bytes as f64 / 1e6,
        rows,
        rate
    )
}

pub async fn run(args: ImportArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.url, &args.api_key)?;
    let size = std::fs::metadata(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?.len();
    let job = match &args.resume {
        Some(id) => api.json("GET", &format!("/v1/imports/{id}"), None).await?,
        None => api.json("POST", "/v1/imports", Some(terms(&args)?)).await?,
    };
    let id = job["id"].as_str().context("the gateway answered without an import id")?.to_string();
    if !args.quiet {
        eprintln!("import {id}: {} ({:.1} MB)", args.file.display(), size as f64 / 1e6);
    }
    let sent = Arc::new(AtomicU64::new(0));
    let content_type = if format_of(&args)? == "csv" { "text/csv" } else { "application/x-ndjson" };
    let started = Instant::now();
    let data_path = format!("/v1/imports/{id}/data");
    let upload = api.upload(&data_path, &args.file, content_type, sent.clone());
    tokio::pin!(upload);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let result = loop {
        tokio::select! {
            r = &mut upload => break r,
            _ = tick.tick() => {
                if args.quiet {
                    continue;
                }
                // The service's own progress: what is committed, not only what was sent.
                if let Ok(p) = api.json("GET", &format!("/v1/imports/{id}"), None).await {
                    let done = p["bytes_done"].as_u64().unwrap_or(0);
                    let rows = ["created", "updated", "skipped", "failed"].iter().map(|k| p[k].as_u64().unwrap_or(0)).sum();
                    eprint!("\r{}", progress_line(done, size, rows, started.elapsed()));
                    let _ = std::io::stderr().flush();
                }
            }
        }
    };
    if !args.quiet {
        eprintln!();
    }
    let job = match result {
        Ok(job) => job,
        Err(e) => {
            bail!(
                "{e:#}\nthe import is kept; resume it with: carnet import contacts {} --resume {id} …",
                args.file.display()
            )
        }
    };
    let counts: Vec<u64> =
        ["created", "updated", "skipped", "failed"].iter().map(|k| job[k].as_u64().unwrap_or(0)).collect();
    let rows: u64 = counts.iter().sum();
    if !args.quiet {
        eprintln!("{}", progress_line(size, size, rows, started.elapsed()));
    }
    let report = args.report.clone().unwrap_or_else(|| default_report(&args.file, &id));
    api.download(&format!("/v1/imports/{id}/report"), &report).await?;
    let summary = serde_json::json!({
        "import_id": id, "status": job["status"], "lines": job["lines_done"],
        "created": counts[0], "updated": counts[1], "skipped": counts[2], "failed": counts[3],
        "report": report.display().to_string(),
        "seconds": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    });
    println!("{summary}");
    Ok(())
}

fn default_report(file: &Path, id: &str) -> PathBuf {
    let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("import");
    file.with_file_name(format!("{stem}.report-{}.csv", &id[id.len().saturating_sub(8)..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_progress_line_shows_rate_and_eta() {
        let line = progress_line(25_000_000, 100_000_000, 50_000, Duration::from_secs(5));
        assert!(line.starts_with("[######------------------]  25%  25.0/100.0 MB  50000 rows  10000 rows/s"), "{line}");
        assert!(line.ends_with("ETA 0:15"), "{line}");
        assert!(progress_line(0, 10, 0, Duration::from_secs(1)).ends_with("ETA --:--"));
    }

    #[test]
    fn test_terms_take_mapping_and_evidence() {
        let args = ImportArgs {
            file: "/tmp/fair.csv".into(),
            map: vec!["E-mail=email".into(), "Notes=".into()],
            basis: "consent".into(),
            purposes: vec!["news".into()],
            collected_at: Some("2026-10-01T10:00:00Z".into()),
            collected_where: "stand sign-up sheet".into(),
            notice_version: 2,
            ..ImportArgs::default()
        };
        let t = terms(&args).unwrap();
        assert_eq!(t["format"], "csv");
        assert_eq!(t["file_name"], "fair.csv");
        assert_eq!(t["mapping"], serde_json::json!({"E-mail": "email", "Notes": ""}));
        assert_eq!(t["evidence"]["collected_at"], "2026-10-01T10:00:00Z");
        let bad = ImportArgs { map: vec!["nope".into()], ..args };
        assert!(terms(&bad).unwrap_err().to_string().contains("COLUMN=FIELD"));
    }
}
