//! `carnet export contacts`: downloads the bulk export of a tenant's contacts from the gateway
//! (`GET /v1/contacts/export`, docs/export.md) into a file, streaming, with progress on stderr
//! and a JSON summary on stdout.
//!
//! The file is written beside its final name (`.<name>.part`, readable by its owner only, since
//! it holds personal data) and renamed only once the whole export arrived: an export cut off
//! half-way leaves no file that looks complete.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use http_body_util::BodyExt as _;

/// How often progress is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

#[derive(clap::Subcommand, Debug)]
pub enum ExportCommand {
    /// Exports every contact of the key's tenant (restricted contacts and erased people left
    /// out) to FILE as CSV or JSON lines; needs a key with `contacts:export`. Prints progress
    /// on stderr and `{"export_id", "contacts", "bytes", …}` on stdout.
    Contacts {
        #[arg(long, value_parser = ["csv", "jsonl"])]
        format: String,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// The gateway, e.g. http://127.0.0.1:8080.
        #[arg(long, value_name = "URL")]
        url: String,
        #[arg(long, value_name = "KEY")]
        api_key: String,
        /// Comma-separated column keys, in the order wanted (default: every column).
        #[arg(long, value_name = "KEYS")]
        fields: Option<String>,
    },
}

/// Runs an export command.
pub async fn run(command: ExportCommand) -> anyhow::Result<()> {
    let ExportCommand::Contacts { format, out, url, api_key, fields } = command;
    let summary = export_contacts(&url, &api_key, &format, fields.as_deref(), &out).await?;
    println!("{summary}");
    Ok(())
}

/// Counts the records of an export as its bytes go by: a record ends at a line feed outside a
/// quoted CSV field (JSON lines escape their line feeds, so every one ends a record there).
#[derive(Debug, Default)]
struct Records {
    csv: bool,
    in_quotes: bool,
    ended: u64,
}

impl Records {
    fn feed(&mut self, bytes: &[u8]) {
        for b in bytes {
            match b {
                b'"' if self.csv => self.in_quotes = !self.in_quotes,
                b'\n' if !self.in_quotes => self.ended += 1,
                _ => {}
            }
        }
    }

    /// Contacts seen so far (the CSV header is not one).
    fn contacts(&self) -> u64 {
        if self.csv { self.ended.saturating_sub(1) } else { self.ended }
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b',' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn part_path(out: &Path) -> anyhow::Result<PathBuf> {
    let name = out.file_name().with_context(|| format!("--out {} is not a file name", out.display()))?;
    Ok(out.with_file_name(format!(".{}.part", name.to_string_lossy())))
}

fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// Streams the export into `out` and returns the summary line.
pub async fn export_contacts(
    url: &str,
    api_key: &str,
    format: &str,
    fields_opt: Option<&str>,
    out: &Path,
) -> anyhow::Result<serde_json::Value> {
    let api = carnet_cli::api::Api::new(url, api_key)?;
    let mut target = format!("/v1/contacts/export?format={}", percent_encode(format));
    if let Some(fields) = fields_opt {
        target.push_str(&format!("&fields={}", percent_encode(fields)));
    }
    let started = Instant::now();
    let (headers, mut body) =
        api.get_stream(&target).await.map_err(|e| anyhow::anyhow!("the export was refused: {e:#}"))?;
    let export_id = headers.get("x-carnet-export-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let part = part_path(out)?;
    let file = create_private(&part).with_context(|| format!("failed to create {}", part.display()))?;
    let mut writer = std::io::BufWriter::with_capacity(256 * 1024, file);
    let mut records = Records { csv: format == "csv", ..Default::default() };
    let mut bytes_written: u64 = 0;
    let mut last_progress = Instant::now();
    let outcome: anyhow::Result<()> = async {
        while let Some(frame) = body.frame().await {
            let frame = frame
                .map_err(|e| anyhow::anyhow!("the export was cut off after {} contacts: {e}", records.contacts()))?;
            let Ok(data) = frame.into_data() else { continue };
            writer.write_all(&data).with_context(|| format!("failed to write {}", part.display()))?;
            records.feed(&data);
            bytes_written += data.len() as u64;
            if last_progress.elapsed() >= PROGRESS_EVERY {
                last_progress = Instant::now();
                let rate = records.contacts() as f64 / started.elapsed().as_secs_f64();
                eprintln!("exported {} contacts, {} bytes, {rate:.0} rows/s", records.contacts(), bytes_written);
            }
        }
        writer.flush().with_context(|| format!("failed to write {}", part.display()))?;
        writer.get_ref().sync_all().with_context(|| format!("failed to write {}", part.display()))?;
        Ok(())
    }
    .await;
    if let Err(e) = outcome {
        drop(writer);
        let _ = std::fs::remove_file(&part);
        return Err(e);
    }
    drop(writer);
    std::fs::rename(&part, out).with_context(|| format!("failed to rename {} to {}", part.display(), out.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    let contacts = records.contacts();
    eprintln!("exported {contacts} contacts, {bytes_written} bytes in {seconds:.2} s");
    Ok(serde_json::json!({
        "export_id": export_id,
        "format": format,
        "file": out.display().to_string(),
        "contacts": contacts,
        "bytes": bytes_written,
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "rows_per_second": if seconds > 0.0 { (contacts as f64 / seconds).round() } else { 0.0 },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_records_count_csv_line_feeds_outside_quotes_only() {
        let mut r = Records { csv: true, ..Default::default() };
        r.feed(b"id,note\r\n1,\"a\r\nb \"\"q\"\"\"\r\n2,");
        r.feed(b"x\r\n");
        assert_eq!(r.contacts(), 2);
        let mut r = Records::default();
        r.feed(b"{\"a\":\"x\\ny\"}\n{\"a\":\"\\\"\"}\n");
        assert_eq!(r.contacts(), 2);
    }

    #[test]
    fn test_query_values_are_encoded() {
        assert_eq!(percent_encode("email,company"), "email,company");
        assert_eq!(percent_encode("a b&c"), "a%20b%26c");
    }
}
