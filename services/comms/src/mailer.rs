//! Delivery to the world: an SMTP relay (pooled connections, STARTTLS or implicit TLS, AUTH),
//! or, with no relay configured, one `.eml` file per mail under a directory.
//!
//! The SMTP transaction is driven step by step (lettre's connection API) so the caller can
//! record the hand-over between the relay's `354` (envelope accepted) and the final `.` that
//! makes the relay take the mail: a crash after the record and before the `.` loses one mail
//! for the time it takes to write its last bytes, and no crash can make a mail go out twice.
//! (Recording after the relay's `250` instead would leave the whole round trip and commit as a
//! window in which a crash re-sends the mail.)

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lettre::Message;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use tokio::sync::{Mutex, Semaphore};

use crate::SmtpConfig;

/// Why a mail was not handed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// The relay refused it for good (5xx): the address bounces.
    Permanent(String),
    /// Try again later (4xx, connection trouble, a failed hand-over record).
    Transient(String),
}

/// What happened to a mail whose hand-over was recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The relay answered 250.
    Accepted,
    /// The connection failed after the final `.`: the relay most likely has the mail. It is
    /// kept as sent (never re-sent), and the summary is logged.
    Unconfirmed(String),
}

/// A configuration error of the relay.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

#[derive(Clone)]
pub enum Mailer {
    Smtp(Arc<SmtpRelay>),
    Files(PathBuf),
}

/// Pooled connections to one relay.
pub struct SmtpRelay {
    host: String,
    port: u16,
    tls: String,
    tls_parameters_opt: Option<TlsParameters>,
    credentials_opt: Option<Credentials>,
    timeout: Duration,
    hello: ClientId,
    idle: Mutex<Vec<AsyncSmtpConnection>>,
    slots: Semaphore,
}

fn classify(e: &lettre::transport::smtp::Error) -> SendError {
    let summary = match e.status() {
        Some(code) => format!("smtp {code}"),
        None if e.is_timeout() => "smtp timeout".into(),
        None => "smtp connection error".into(),
    };
    if e.is_permanent() { SendError::Permanent(summary) } else { SendError::Transient(summary) }
}

impl SmtpRelay {
    async fn within<T>(
        &self,
        fut: impl Future<Output = Result<T, lettre::transport::smtp::Error>>,
    ) -> Result<T, SendError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(classify(&e)),
            Err(_) => Err(SendError::Transient("smtp timeout".into())),
        }
    }

    /// A new connection: EHLO, STARTTLS when configured, AUTH when configured. Every failure
    /// here is the relay's (or its configuration's), never the recipient's: it is temporary.
    async fn connect(&self) -> Result<AsyncSmtpConnection, SendError> {
        self.connect_inner().await.map_err(|e| match e {
            SendError::Permanent(s) | SendError::Transient(s) => {
                tracing::warn!(summary = %s, "cannot open a session with the SMTP relay");
                SendError::Transient(format!("relay session: {s}"))
            }
        })
    }

    async fn connect_inner(&self) -> Result<AsyncSmtpConnection, SendError> {
        // Session errors hold no recipient data: their text is logged for the operator.
        fn logged(e: lettre::transport::smtp::Error) -> lettre::transport::smtp::Error {
            tracing::warn!(error = %e, "SMTP relay session error");
            e
        }
        let wrapper = if self.tls == "tls" { self.tls_parameters_opt.clone() } else { None };
        let connect = AsyncSmtpConnection::connect_tokio1(
            (self.host.as_str(), self.port),
            Some(self.timeout),
            &self.hello,
            wrapper,
            None,
        );
        let mut conn = self.within(async { connect.await.map_err(logged) }).await?;
        if self.tls == "starttls"
            && let Some(params) = self.tls_parameters_opt.clone()
        {
            self.within(async { conn.starttls(params, &self.hello).await.map_err(logged) }).await?;
        }
        if let Some(creds) = &self.credentials_opt {
            let mechanisms = [Mechanism::Plain, Mechanism::Login];
            self.within(async { conn.auth(&mechanisms, creds).await.map_err(logged) }).await?;
        }
        Ok(conn)
    }

    /// MAIL, RCPT and DATA on a pooled connection (a fresh one when a reused one fails first).
    async fn open_transaction(&self, message: &Message, bytes: &[u8]) -> Result<AsyncSmtpConnection, SendError> {
        let envelope = message.envelope();
        let reused = self.idle.lock().await.pop();
        let mut attempts: Vec<Option<AsyncSmtpConnection>> = vec![reused, None];
        if attempts[0].is_none() {
            attempts.remove(0);
        }
        let last = attempts.len() - 1;
        for (i, conn_opt) in attempts.into_iter().enumerate() {
            let mut conn = match conn_opt {
                Some(c) => c,
                None => self.connect().await?,
            };
            let mut params = Vec::new();
            if !bytes.is_ascii() && conn.server_info().supports_feature(Extension::EightBitMime) {
                params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
            }
            let res = async {
                // A refused sender is the relay's policy, not the recipient's bounce.
                self.within(conn.command(Mail::new(envelope.from().cloned(), params))).await.map_err(|e| match e {
                    SendError::Permanent(s) | SendError::Transient(s) => {
                        SendError::Transient(format!("MAIL FROM: {s}"))
                    }
                })?;
                for to in envelope.to() {
                    self.within(conn.command(Rcpt::new(to.clone(), vec![]))).await?;
                }
                self.within(conn.command(Data)).await
            }
            .await;
            match res {
                Ok(_) => return Ok(conn),
                // A stale pooled connection: try once more on a fresh one.
                Err(SendError::Transient(_)) if i < last => conn.abort().await,
                Err(e) => {
                    conn.abort().await;
                    return Err(e);
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    async fn send(
        &self,
        message: &Message,
        hand_over: impl Future<Output = Result<(), SendError>>,
    ) -> Result<Outcome, SendError> {
        let _slot = self.slots.acquire().await.map_err(|_| SendError::Transient("mailer closed".into()))?;
        let bytes = message.formatted();
        let mut conn = self.open_transaction(message, &bytes).await?;
        if let Err(e) = hand_over.await {
            // Nothing was recorded: the relay discards the open transaction.
            conn.abort().await;
            return Err(e);
        }
        match tokio::time::timeout(self.timeout, conn.message(&bytes)).await {
            Ok(Ok(_)) => {
                self.idle.lock().await.push(conn);
                Ok(Outcome::Accepted)
            }
            Ok(Err(e)) if e.status().is_some() => {
                conn.abort().await;
                Err(classify(&e))
            }
            Ok(Err(e)) => {
                conn.abort().await;
                Ok(Outcome::Unconfirmed(match classify(&e) {
                    SendError::Permanent(s) | SendError::Transient(s) => s,
                }))
            }
            Err(_) => {
                conn.abort().await;
                Ok(Outcome::Unconfirmed("smtp timeout after the message was written".into()))
            }
        }
    }
}

impl Mailer {
    /// The relay of `cfg`, or `.eml` files under `mail_dir` when `cfg.host` is empty.
    pub fn from_config(cfg: &SmtpConfig, mail_dir: PathBuf) -> Result<Mailer, ConfigError> {
        if cfg.host.is_empty() {
            std::fs::create_dir_all(&mail_dir)
                .map_err(|e| ConfigError(format!("failed to create {}: {e}", mail_dir.display())))?;
            return Ok(Mailer::Files(mail_dir));
        }
        let tls_parameters_opt = if cfg.tls == "none" {
            None
        } else {
            let mut builder = TlsParameters::builder(cfg.host.clone());
            if !cfg.ca_file.is_empty() {
                let pem = std::fs::read(&cfg.ca_file)
                    .map_err(|e| ConfigError(format!("comms.smtp.ca_file {}: {e}", cfg.ca_file)))?;
                let cert = Certificate::from_pem(&pem)
                    .map_err(|e| ConfigError(format!("comms.smtp.ca_file {}: {e}", cfg.ca_file)))?;
                builder = builder.add_root_certificate(cert);
            }
            Some(builder.build_rustls().map_err(|e| ConfigError(format!("comms.smtp.tls: {e}")))?)
        };
        let credentials_opt =
            (!cfg.username.is_empty()).then(|| Credentials::new(cfg.username.clone(), cfg.password.clone()));
        Ok(Mailer::Smtp(Arc::new(SmtpRelay {
            host: cfg.host.clone(),
            port: cfg.port,
            tls: cfg.tls.clone(),
            tls_parameters_opt,
            credentials_opt,
            timeout: Duration::from_millis(cfg.timeout_ms),
            hello: ClientId::default(),
            idle: Mutex::new(Vec::new()),
            slots: Semaphore::new(cfg.max_connections as usize),
        })))
    }

    /// Hands one message over. `hand_over` records that the mail is being handed over; it runs
    /// once the relay accepted the envelope, just before the final `.` (for files: after the
    /// file is in place, whose name, `file_stem`, makes a repeat overwrite it).
    pub async fn send(
        &self,
        message: &Message,
        file_stem: &str,
        hand_over: impl Future<Output = Result<(), SendError>>,
    ) -> Result<Outcome, SendError> {
        match self {
            Mailer::Smtp(relay) => relay.send(message, hand_over).await,
            Mailer::Files(dir) => {
                let path = dir.join(format!("{file_stem}.eml"));
                let tmp = dir.join(format!(".{file_stem}.tmp"));
                let bytes = message.formatted();
                let write = async {
                    tokio::fs::write(&tmp, &bytes).await?;
                    tokio::fs::rename(&tmp, &path).await
                };
                write.await.map_err(|e| SendError::Transient(format!("writing the .eml file failed: {}", e.kind())))?;
                hand_over.await?;
                Ok(Outcome::Accepted)
            }
        }
    }
}
