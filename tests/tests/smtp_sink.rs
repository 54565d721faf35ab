//! The loopback SMTP sink itself (tests/smtp/sink.py): what lettre sends arrives parsed, AUTH is
//! enforced when asked, and a rejected recipient is a permanent error that stores nothing.

use std::time::Duration;

use carnet_tests::smtp::{SinkOptions, SmtpSink};
use lettre::address::Envelope;
use lettre::message::{Mailbox, MultiPart, header::ContentType};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

const WAIT: Duration = Duration::from_secs(10);

fn transport(sink: &SmtpSink) -> AsyncSmtpTransport<Tokio1Executor> {
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(sink.port)
        .timeout(Some(Duration::from_secs(10)))
        .build()
}

fn mailbox(s: &str) -> Mailbox {
    s.parse().expect("mailbox")
}

#[tokio::test]
async fn messages_round_trip() {
    let Some(sink) = SmtpSink::start().await else { return };
    let mailer = transport(&sink);

    // Longer than a line may be (78 characters), with non-ASCII: folded and encoded on the wire.
    let long_subject =
        format!("Confirmez votre abonnement à la lettre d'information — {}", "très ".repeat(20).trim_end());
    let plain = Message::builder()
        .from(mailbox("Carnet <noreply@carnet.test>"))
        .to(mailbox("Zoë Müller <zoe@example.test>"))
        .subject(long_subject.clone())
        .header(ContentType::TEXT_PLAIN)
        .body("Bonjour Zoë,\nmerci — é, ü, ß.\n".to_string())
        .expect("message");
    mailer.send(plain).await.expect("first mail sent");

    let alternative = Message::builder()
        .from(mailbox("noreply@carnet.test"))
        .to(mailbox("ana@example.test"))
        .cc(mailbox("ops@example.test"))
        .subject("Second")
        .multipart(MultiPart::alternative_plain_html(
            "plain part: café\n".to_string(),
            "<p>html part: café</p>".to_string(),
        ))
        .expect("message");
    mailer.send(alternative).await.expect("second mail sent");

    let mails = sink.wait_for(2, WAIT).await;
    assert_eq!(mails.len(), 2);
    assert_eq!(sink.count(), 2);

    let first = &mails[0];
    assert_eq!(first.mail_from, "noreply@carnet.test");
    assert_eq!(first.rcpt_tos, vec!["zoe@example.test"]);
    assert_eq!(first.header("subject"), Some(long_subject.as_str()));
    assert_eq!(first.header("FROM"), Some("Carnet <noreply@carnet.test>"));
    assert_eq!(first.header("To"), Some("Zoë Müller <zoe@example.test>"));
    assert!(first.header("Date").is_some(), "{:?}", first.headers);
    assert_eq!(first.body, "Bonjour Zoë,\nmerci — é, ü, ß.\n");
    assert!(first.html.is_none());
    // On the wire the subject was encoded and folded over several lines.
    let head = &first.raw[..first.raw.find("\r\n\r\n").expect("a header block")];
    assert!(head.contains("\r\n ") || head.contains("\r\n\t"), "{head}");
    assert!(head.lines().all(|line| line.len() <= 78), "{head}");
    assert!(!first.raw.contains(&long_subject));

    let second = &mails[1];
    assert_eq!(second.rcpt_tos, vec!["ana@example.test", "ops@example.test"]);
    assert_eq!(second.header("Subject"), Some("Second"));
    assert!(second.header("content-type").unwrap().starts_with("multipart/alternative"), "{:?}", second.headers);
    assert_eq!(second.body, "plain part: café\n");
    assert_eq!(second.html.as_deref(), Some("<p>html part: café</p>"));
    assert!(second.received_at >= first.received_at);
}

#[tokio::test]
async fn auth_is_required_when_configured() {
    let opts = SinkOptions { auth_opt: Some(("carnet".into(), "s3cret".into())), ..Default::default() };
    let Some(sink) = SmtpSink::start_with(opts).await else { return };
    let message = || {
        Message::builder()
            .from(mailbox("noreply@carnet.test"))
            .to(mailbox("ana@example.test"))
            .subject("auth")
            .body("hello".to_string())
            .expect("message")
    };

    let anonymous = transport(&sink);
    let err = anonymous.send(message()).await.expect_err("sending without AUTH fails");
    assert!(err.is_permanent(), "{err:?}");

    let with_password = |password: &str, mechanism: Mechanism| {
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
            .port(sink.port)
            .timeout(Some(Duration::from_secs(10)))
            .credentials(Credentials::new("carnet".into(), password.into()))
            .authentication(vec![mechanism])
            .build()
    };
    for mechanism in [Mechanism::Plain, Mechanism::Login] {
        let err = with_password("wrong", mechanism).send(message()).await.expect_err("a wrong password fails");
        assert!(err.is_permanent(), "{mechanism:?}: {err:?}");
    }
    assert_eq!(sink.count(), 0);

    for mechanism in [Mechanism::Plain, Mechanism::Login] {
        with_password("s3cret", mechanism).send(message()).await.expect("sending with AUTH succeeds");
    }
    let mails = sink.wait_for(2, WAIT).await;
    assert_eq!(mails.len(), 2);
    assert!(mails.iter().all(|mail| mail.body.trim_end() == "hello"), "{mails:?}");
}

#[tokio::test]
async fn rejected_recipient_is_a_permanent_error() {
    let opts = SinkOptions { reject: vec!["Bounce@Example.test".into()], ..Default::default() };
    let Some(sink) = SmtpSink::start_with(opts).await else { return };
    let mailer = transport(&sink);
    let message = Message::builder()
        .from(mailbox("noreply@carnet.test"))
        .to(mailbox("bounce@example.TEST"))
        .subject("bounce")
        .body("hello".to_string())
        .expect("message");

    let err = mailer.send(message).await.expect_err("a rejected recipient fails");
    assert!(err.is_permanent(), "{err:?}");
    assert!(err.to_string().contains("mailbox unavailable"), "{err}");
    assert_eq!(err.status().map(|code| code.to_string()).as_deref(), Some("550"), "{err:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sink.count(), 0);
    assert_eq!(std::fs::read_dir(&sink.dir).unwrap().count(), 0, "nothing is written for a bounce");

    // The sink stays usable: a message to someone else still arrives, alone.
    let ok = Message::builder()
        .from(mailbox("noreply@carnet.test"))
        .to(mailbox("ana@example.test"))
        .subject("fine")
        .body("hello".to_string())
        .expect("message");
    mailer.send(ok).await.expect("another recipient is accepted");
    let mails = sink.wait_for(1, WAIT).await;
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].rcpt_tos, vec!["ana@example.test"]);
}

/// Encodings lettre may not pick on its own: folded headers with encoded-words, quoted-printable
/// and base64 bodies in other charsets, a text/plain part nested under multipart/mixed.
#[tokio::test]
async fn transfer_encodings_are_decoded() {
    let Some(sink) = SmtpSink::start().await else { return };
    let mailer = transport(&sink);
    let envelope = |to: &str| {
        Envelope::new(Some("noreply@carnet.test".parse().unwrap()), vec![to.parse().unwrap()]).expect("envelope")
    };

    let quoted_printable = concat!(
        "From: noreply@carnet.test\r\n",
        "To: a@example.test\r\n",
        "Subject: =?UTF-8?Q?Caf=C3=A9?=\r\n",
        " =?UTF-8?Q?_cr=C3=A8me?= and\r\n",
        " =?ISO-8859-1?B?/GJlcg==?=  folded\r\n",
        "X-Long: one\r\n\ttwo\r\n",
        "MIME-Version: 1.0\r\n",
        "Content-Type: text/plain; charset=ISO-8859-1\r\n",
        "Content-Transfer-Encoding: quoted-printable\r\n",
        "\r\n",
        "caf=E9 =FCber a very long line that is soft=\r\n",
        " broken\r\n",
    );
    mailer.send_raw(&envelope("a@example.test"), quoted_printable.as_bytes()).await.expect("qp sent");

    let base64_mixed = concat!(
        "From: noreply@carnet.test\r\n",
        "To: b@example.test\r\n",
        "Subject: mixed\r\n",
        "MIME-Version: 1.0\r\n",
        "Content-Type: multipart/mixed; boundary=\"outer\"\r\n",
        "\r\n",
        "--outer\r\n",
        "Content-Type: multipart/alternative; boundary=inner\r\n",
        "\r\n",
        "--inner\r\n",
        "Content-Type: text/plain; charset=utf-8\r\n",
        "Content-Transfer-Encoding: base64\r\n",
        "\r\n",
        "w6kgYW5kIMO8Cg==\r\n",
        "--inner\r\n",
        "Content-Type: text/html; charset=utf-8\r\n",
        "\r\n",
        "<b>html</b>\r\n",
        "--inner--\r\n",
        "--outer\r\n",
        "Content-Type: text/plain; charset=utf-8\r\n",
        "Content-Disposition: attachment; filename=notes.txt\r\n",
        "\r\n",
        "an attachment\r\n",
        "--outer--\r\n",
    );
    mailer.send_raw(&envelope("b@example.test"), base64_mixed.as_bytes()).await.expect("base64 sent");

    let mails = sink.wait_for(2, WAIT).await;
    let qp = &mails[0];
    // Whitespace between two encoded-words goes, any other stays as it was.
    assert_eq!(qp.header("subject"), Some("Café crème and über  folded"));
    assert_eq!(qp.header("x-long"), Some("one\ttwo"));
    assert_eq!(qp.header_all("to"), vec!["a@example.test"]);
    // lettre ends DATA with CRLF . CRLF after the raw bytes: one more line end in the body.
    assert_eq!(qp.body.trim_end(), "café über a very long line that is soft broken");

    let mixed = &mails[1];
    assert_eq!(mixed.body, "é and ü\n");
    assert_eq!(mixed.html.as_deref(), Some("<b>html</b>"));
}
