//! A real SMTP server on loopback for the tests: `tests/smtp/sink.py` (aiosmtpd) accepts mail on a
//! free port and writes every message to a fresh temporary directory, where the tests read it
//! back parsed. Without aiosmtpd the sink is skipped ([`SmtpSink::start`] returns `None`), unless
//! `CARNET_REQUIRE_SMTP=1` (set by the test command and CI), where it panics.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

/// How long the sink may take to print `READY <port>`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How often [`SmtpSink::wait_for`] looks at the directory.
const POLL: Duration = Duration::from_millis(20);

/// Options of a sink; `SinkOptions::default()` accepts every message without AUTH.
#[derive(Clone, Debug, Default)]
pub struct SinkOptions {
    /// `(user, password)`: AUTH PLAIN or LOGIN (without TLS) is then required before MAIL.
    pub auth_opt: Option<(String, String)>,
    /// Recipients answered `550 5.1.1 mailbox unavailable` at RCPT TO (case-insensitive): a
    /// hard bounce.
    pub reject: Vec<String>,
    /// `(certificate PEM, key PEM)` paths: STARTTLS is then offered and required.
    pub tls_opt: Option<(PathBuf, PathBuf)>,
}

/// A running loopback SMTP server; killed, and its directory removed, on drop.
pub struct SmtpSink {
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    /// Where it writes accepted messages (`<seq>.json`).
    pub dir: PathBuf,
    // Dropped in this order: the server first, then its directory.
    child: Child,
    _stdout: BufReader<ChildStdout>,
    tempdir: tempfile::TempDir,
}

/// One accepted message, as the sink received it.
#[derive(Clone, Debug)]
pub struct ReceivedMail {
    /// The envelope sender (MAIL FROM), `""` for a null sender.
    pub mail_from: String,
    /// The envelope recipients (RCPT TO) the sink accepted.
    pub rcpt_tos: Vec<String>,
    /// The message as sent after DATA (CRLF line ends; non-UTF-8 bytes replaced).
    pub raw: String,
    /// Top-level headers in order, values unfolded and RFC 2047 encoded-words decoded.
    pub headers: Vec<(String, String)>,
    /// The decoded text/plain body (transfer encoding and charset undone, line ends as `\n`):
    /// the message body when it is not multipart, else its first text/plain part that is not
    /// an attachment (empty when there is none).
    pub body: String,
    /// The first text/html part, decoded likewise, when there is one.
    pub html: Option<String>,
    /// When the sink accepted it (Unix time, seconds).
    pub received_at: f64,
}

impl ReceivedMail {
    /// The value of the first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }

    /// The values of every header called `name` (case-insensitive), in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str()).collect()
    }

    /// Parses a message from its raw bytes (as sent after DATA) with its envelope.
    pub fn parse(mail_from: String, rcpt_tos: Vec<String>, bytes: &[u8], received_at: f64) -> Result<Self, String> {
        let parsed = mailparse::parse_mail(bytes).map_err(|e| format!("unparseable message: {e}"))?;
        let headers = parsed.headers.iter().map(|h| (h.get_key(), header_value(h.get_value_raw()))).collect();
        let body = if parsed.ctype.mimetype.starts_with("multipart/") {
            first_part(&parsed, "text/plain")?.unwrap_or_default()
        } else {
            text_of(&parsed)?
        };
        let html = first_part(&parsed, "text/html")?;
        Ok(ReceivedMail {
            mail_from,
            rcpt_tos,
            raw: String::from_utf8_lossy(bytes).into_owned(),
            headers,
            body,
            html,
            received_at,
        })
    }
}

/// A header's value unfolded as RFC 5322 says (a line break before whitespace is removed, the
/// whitespace kept), then with its RFC 2047 encoded-words decoded.
fn header_value(raw: &[u8]) -> String {
    let mut unfolded = Vec::with_capacity(raw.len() + 8);
    unfolded.extend_from_slice(b"X: ");
    let mut i = 0;
    while i < raw.len() {
        let newline = match raw[i..] {
            [b'\r', b'\n', ..] => 2,
            [b'\n', ..] => 1,
            _ => 0,
        };
        if newline == 0 {
            unfolded.push(raw[i]);
            i += 1;
        } else {
            // A fold (the next line starts with whitespace) or the header's end: drop it.
            i += newline;
        }
    }
    unfolded.extend_from_slice(b"\r\n");
    // mailparse decodes encoded-words of a one-line header and keeps its other whitespace as is.
    match mailparse::parse_header(&unfolded) {
        Ok((header, _)) => header.get_value(),
        Err(_) => String::from_utf8_lossy(&unfolded[3..unfolded.len() - 2]).trim().to_string(),
    }
}

/// The decoded text of a leaf part, with `\n` line ends.
fn text_of(part: &mailparse::ParsedMail<'_>) -> Result<String, String> {
    let text = part.get_body().map_err(|e| format!("undecodable body: {e}"))?;
    Ok(text.replace("\r\n", "\n"))
}

/// The decoded text of the first non-attachment part of type `mimetype` (depth first).
fn first_part(part: &mailparse::ParsedMail<'_>, mimetype: &str) -> Result<Option<String>, String> {
    if part.subparts.is_empty() {
        let attachment = part.get_content_disposition().disposition == mailparse::DispositionType::Attachment;
        if part.ctype.mimetype.eq_ignore_ascii_case(mimetype) && !attachment {
            return text_of(part).map(Some);
        }
        return Ok(None);
    }
    for sub in &part.subparts {
        if let Some(text) = first_part(sub, mimetype)? {
            return Ok(Some(text));
        }
    }
    Ok(None)
}

/// The sink's script: `tests/smtp/sink.py`.
pub fn sink_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("smtp").join("sink.py")
}

fn required() -> bool {
    std::env::var("CARNET_REQUIRE_SMTP").as_deref() == Ok("1")
}

/// `None` when aiosmtpd can be imported, else why not.
async fn aiosmtpd_missing() -> Option<String> {
    let out = Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await;
    match out {
        Err(e) => Some(format!("python3 cannot be run: {e}")),
        Ok(out) if !out.status.success() => {
            Some(format!("`python3 -c 'import aiosmtpd'` failed: {}", String::from_utf8_lossy(&out.stderr).trim()))
        }
        Ok(_) => None,
    }
}

impl SmtpSink {
    /// Starts a sink that accepts every message; `None` (skip) without aiosmtpd.
    pub async fn start() -> Option<SmtpSink> {
        SmtpSink::start_with(SinkOptions::default()).await
    }

    /// Starts a sink with `opts`; `None` (skip) without aiosmtpd, a panic instead when
    /// `CARNET_REQUIRE_SMTP=1`.
    pub async fn start_with(opts: SinkOptions) -> Option<SmtpSink> {
        if let Some(why) = aiosmtpd_missing().await {
            if required() {
                panic!(
                    "CARNET_REQUIRE_SMTP=1 but the SMTP sink cannot run: {why} (install it: python3 -m pip install aiosmtpd==1.4.6)"
                );
            }
            eprintln!("skipped: no SMTP sink ({why}); run the README's test command");
            return None;
        }

        let tempdir = tempfile::Builder::new().prefix("carnet-smtp.").tempdir().expect("temp dir");
        let dir = tempdir.path().join("mail");
        std::fs::create_dir(&dir).expect("mail dir");
        let log_path = tempdir.path().join("sink.log");
        let log = std::fs::File::create(&log_path).expect("sink log");

        let mut command = Command::new("python3");
        command.arg(sink_script()).args(["--host", "127.0.0.1", "--port", "0", "--dir"]).arg(&dir);
        if let Some((user, password)) = &opts.auth_opt {
            command.arg("--auth").arg(format!("{user}:{password}"));
        }
        for rcpt in &opts.reject {
            command.arg("--reject").arg(rcpt);
        }
        if let Some((cert, key)) = &opts.tls_opt {
            command.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the SMTP sink {}: {e}", sink_script().display()));
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));

        let ready = tokio::time::timeout(READY_TIMEOUT, async {
            let mut line = String::new();
            loop {
                line.clear();
                match stdout.read_line(&mut line).await {
                    Ok(0) => return Err("it exited before listening".to_string()),
                    Err(e) => return Err(format!("reading its stdout: {e}")),
                    Ok(_) => {
                        if let Some(port) = line.trim().strip_prefix("READY ") {
                            return port.trim().parse::<u16>().map_err(|e| format!("bad READY line {line:?}: {e}"));
                        }
                    }
                }
            }
        })
        .await;
        let port = match ready {
            Ok(Ok(port)) => port,
            Ok(Err(why)) => {
                let _ = child.kill().await;
                panic!("the SMTP sink did not start: {why}; its log:\n{}", read_log(&log_path))
            }
            Err(_) => {
                let _ = child.kill().await;
                panic!(
                    "the SMTP sink printed no READY line within {READY_TIMEOUT:?}; its log:\n{}",
                    read_log(&log_path)
                )
            }
        };
        Some(SmtpSink { port, dir, child, _stdout: stdout, tempdir })
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The accepted messages' files, by sequence number.
    fn files(&self) -> Vec<(u64, PathBuf)> {
        let entries = std::fs::read_dir(&self.dir)
            .unwrap_or_else(|e| panic!("cannot read the SMTP sink's dir {}: {e}", self.dir.display()));
        let mut files: Vec<(u64, PathBuf)> = entries
            .filter_map(|entry| {
                let path = entry.ok()?.path();
                // Only `<seq>.json`: the sink's temp files (`.incoming-*.tmp`) are not messages yet.
                let seq = path.file_name()?.to_str()?.strip_suffix(".json")?.parse().ok()?;
                Some((seq, path))
            })
            .collect();
        files.sort();
        files
    }

    /// How many messages the sink has accepted so far.
    pub fn count(&self) -> usize {
        self.files().len()
    }

    /// Every message accepted so far, in the order received.
    pub fn messages(&self) -> Vec<ReceivedMail> {
        self.files().into_iter().map(|(_, path)| read_message(&path)).collect()
    }

    /// Waits until at least `n` messages arrived and returns them all; panics after `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<ReceivedMail> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let count = self.count();
            if count >= n {
                return self.messages();
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "the SMTP sink received {count} message(s), expected at least {n} within {timeout:?}; its log:\n{}",
                    read_log(&self.tempdir.path().join("sink.log"))
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The sink's stderr so far.
    pub fn log(&self) -> String {
        read_log(&self.tempdir.path().join("sink.log"))
    }

    /// Stops the server now (dropping the sink does too).
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("(no log: {e})"))
}

fn read_message(path: &Path) -> ReceivedMail {
    let fail = |why: String| -> ! { panic!("SMTP sink message {}: {why}", path.display()) };
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| fail(e.to_string()));
    let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| fail(e.to_string()));
    let mail_from = json["mail_from"].as_str().unwrap_or_default().to_string();
    let rcpt_tos = json["rcpt_tos"]
        .as_array()
        .map(|list| list.iter().filter_map(|r| r.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    // The exact bytes when the sink gave them, else its UTF-8 text.
    let bytes = match json["data_b64"].as_str() {
        Some(b64) => base64::engine::general_purpose::STANDARD.decode(b64).unwrap_or_else(|e| fail(e.to_string())),
        None => json["data"].as_str().unwrap_or_else(|| fail("no data".to_string())).as_bytes().to_vec(),
    };
    let received_at = json["received_at"].as_f64().unwrap_or_default();
    ReceivedMail::parse(mail_from, rcpt_tos, &bytes, received_at).unwrap_or_else(|e| fail(e))
}

/// A private CA and a relay certificate it signed for `localhost` and `127.0.0.1`, made with
/// `openssl` in `dir`: (CA certificate, relay certificate, relay key) paths.
pub fn private_ca_and_relay_cert(dir: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl runs (apt-get install openssl)");
        assert!(status.success(), "openssl {args:?} failed");
    };
    std::fs::write(dir.join("relay.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
        .unwrap();
    run(&["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Carnet test CA"]
        .iter()
        .chain(&["-keyout", "ca.key", "-out", "ca.crt"])
        .copied()
        .collect::<Vec<_>>());
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "relay.key",
        "-out",
        "relay.csr",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "relay.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "relay.ext",
        "-out",
        "relay.crt",
    ]);
    (dir.join("ca.crt"), dir.join("relay.crt"), dir.join("relay.key"))
}
