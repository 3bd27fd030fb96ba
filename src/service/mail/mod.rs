//! Outgoing mail: a persistent queue in RocksDB and a sender task that
//! delivers it over SMTP (lettre), retrying with back-off while the mail
//! server cannot be reached, so a mail once queued is never lost. With no
//! `email.smtp_url`, mails are written to the log and kept for the admin
//! API's outbox instead.

pub mod data;

use std::{sync::Arc, time::Duration};

use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Mailbox, MultiPart},
    transport::smtp::{
        authentication::Credentials,
        client::{Certificate, Tls, TlsParameters},
    },
};
use tokio::sync::Notify;

pub use self::data::{Mail, MailState};
use crate::{
    config::Settings,
    error::Result,
    service::{Services, blocking},
    util,
};

/// First wait after a failed try; doubled each time up to `email.max_retry_interval`.
const FIRST_RETRY: Duration = Duration::from_secs(5);
/// One SMTP conversation at most this long.
const SMTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Sent, failed and cancelled mails are forgotten after this long.
const KEEP_DONE: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// Where and how to reach the mail server, from `email.smtp_url`.
#[derive(Clone, Debug)]
pub struct SmtpTarget {
    host: String,
    port: u16,
    tls: TlsMode,
    credentials: Option<(String, String)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TlsMode {
    /// `smtps://`: TLS from the first byte.
    Wrapper,
    /// STARTTLS, refusing a server without it.
    Required,
    /// STARTTLS when offered.
    Opportunistic,
    None,
}

impl SmtpTarget {
    pub fn parse(raw: &str) -> std::result::Result<Self, String> {
        let url = url::Url::parse(raw).map_err(|e| format!("it is not a URL ({e})"))?;
        let wrapper = match url.scheme() {
            "smtp" => false,
            "smtps" => true,
            other => return Err(format!("the scheme is `{other}`, not smtp or smtps")),
        };
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or("it names no host")?.to_owned();
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = url.port().unwrap_or(if wrapper { 465 } else { 587 });
        let mut tls = if wrapper { TlsMode::Wrapper } else { TlsMode::Opportunistic };
        for (key, value) in url.query_pairs() {
            match (key.as_ref(), value.as_ref(), wrapper) {
                ("tls", "required", false) => tls = TlsMode::Required,
                ("tls", "opportunistic", false) => tls = TlsMode::Opportunistic,
                ("tls", "none", false) => tls = TlsMode::None,
                ("tls", _, true) => return Err("`tls=` does not apply to smtps://".to_owned()),
                ("tls", other, false) => return Err(format!("`tls={other}` is not required, opportunistic or none")),
                (other, _, _) => return Err(format!("`{other}=` is not an option porch knows")),
            }
        }
        let credentials = if url.username().is_empty() {
            None
        } else {
            let decode = |s: &str| percent_decode(s);
            Some((decode(url.username()), decode(url.password().unwrap_or_default())))
        };
        Ok(Self { host, port, tls, credentials })
    }
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// A domain name as mail addresses use it: dot-separated labels of letters,
/// digits and hyphens, with at least one dot.
pub fn valid_domain(domain: &str) -> bool {
    domain.len() <= 253
        && domain.contains('.')
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// A mail address as porch accepts it for invitations, normalised (the
/// domain lower-cased); `None` if it is not one.
pub fn normalise_address(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let (local, domain) = raw.rsplit_once('@')?;
    let domain = domain.to_ascii_lowercase();
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local.chars().all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c));
    let address = format!("{local}@{domain}");
    (local_ok && valid_domain(&domain) && address.len() <= 254 && address.parse::<lettre::Address>().is_ok())
        .then_some(address)
}

/// The mail sender: the transport built from the config, and the signal
/// that wakes the sender task when a mail is queued.
pub struct Mailer {
    transport: Option<AsyncSmtpTransport<Tokio1Executor>>,
    from: Mailbox,
    wake: Notify,
}

impl Mailer {
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        let email = &settings.raw.email;
        let from = if email.from.is_empty() {
            format!("porch <noreply@{}>", settings.server_name.host())
        } else {
            email.from.clone()
        };
        let from: Mailbox = from.parse().map_err(|e| {
            anyhow::anyhow!("`email.from` cannot be used as a sender ({e}); set it like \"Chat <chat@example.org>\"")
        })?;
        let transport = if email.smtp_url.is_empty() {
            None
        } else {
            let target = SmtpTarget::parse(&email.smtp_url).map_err(|e| anyhow::anyhow!("email.smtp_url: {e}"))?;
            Some(transport(&target, &email.trusted_ca)?)
        };
        Ok(Self { transport, from, wake: Notify::new() })
    }

    pub fn configured(&self) -> bool {
        self.transport.is_some()
    }
}

fn transport(target: &SmtpTarget, trusted_ca: &str) -> anyhow::Result<AsyncSmtpTransport<Tokio1Executor>> {
    let mut parameters = TlsParameters::builder(target.host.clone());
    if !trusted_ca.is_empty() {
        let pem = std::fs::read(trusted_ca).map_err(|e| {
            anyhow::anyhow!("cannot read `email.trusted_ca` ({trusted_ca}: {e}); give the path of a PEM certificate")
        })?;
        let certificate = Certificate::from_pem(&pem)
            .map_err(|e| anyhow::anyhow!("`email.trusted_ca` ({trusted_ca}) is not a PEM certificate: {e}"))?;
        parameters = parameters.add_root_certificate(certificate);
    }
    let parameters =
        parameters.build_rustls().map_err(|e| anyhow::anyhow!("cannot set up TLS for the mail server: {e}"))?;
    let tls = match target.tls {
        TlsMode::Wrapper => Tls::Wrapper(parameters),
        TlsMode::Required => Tls::Required(parameters),
        TlsMode::Opportunistic => Tls::Opportunistic(parameters),
        TlsMode::None => Tls::None,
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(target.host.as_str())
        .port(target.port)
        .tls(tls)
        .timeout(Some(SMTP_TIMEOUT));
    if let Some((user, password)) = &target.credentials {
        builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
    }
    Ok(builder.build())
}

/// What to send: the recipient, the subject and both bodies.
pub struct Outgoing {
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// A mail record for `outgoing`, to be written in the caller's batch (with
/// whatever it is about, so both land or neither); [`wake`] after commit.
pub fn prepare(s: &Services, outgoing: Outgoing) -> Mail {
    let now = util::now_ms();
    let state = if s.mail.configured() { MailState::Queued } else { MailState::Logged };
    Mail {
        id: format!("{now:016x}{}", util::random_string(8)),
        to: outgoing.to,
        subject: outgoing.subject,
        text: Some(outgoing.text),
        html: Some(outgoing.html),
        created_at: now,
        state,
        attempts: 0,
        next_attempt_at: now,
        last_error: None,
        sent_at: None,
    }
}

/// After a prepared mail is committed: log it when there is no mail
/// server, else wake the sender.
pub fn wake(s: &Services, mail: &Mail) {
    if mail.state == MailState::Logged {
        tracing::info!(
            to = %mail.to,
            subject = %mail.subject,
            "no mail server is configured (email.smtp_url), so this mail is kept in the admin outbox \
             (GET /_porch/admin/v1/outbox) instead of being sent:\n{}",
            mail.text.as_deref().unwrap_or_default()
        );
    } else {
        s.mail.wake.notify_one();
    }
}

/// Withdraw a mail that has not gone out yet.
pub fn cancel(s: &Services, id: &str) -> Result<()> {
    if let Some(mut mail) = data::get(&s.db, id)?
        && matches!(mail.state, MailState::Queued | MailState::Failing)
    {
        mail.state = MailState::Cancelled;
        mail.text = None;
        mail.html = None;
        data::save(&s.db, &mail)?;
    }
    Ok(())
}

pub fn get(s: &Services, id: &str) -> Result<Option<Mail>> {
    data::get(&s.db, id)
}

/// Mails kept because no mail server is configured, newest first.
pub fn outbox(s: &Services) -> Result<Vec<Mail>> {
    let mut mails: Vec<Mail> = data::all(&s.db)?.into_iter().filter(|m| m.state == MailState::Logged).collect();
    mails.reverse();
    Ok(mails)
}

/// The sender task: sends what is due, one mail at a time, then sleeps
/// until the next retry is due or a mail is queued.
pub async fn run(s: Arc<Services>) {
    if s.mail.transport.is_none() {
        return;
    }
    loop {
        let due = blocking(&s, |s| {
            let now = util::now_ms();
            let mails = data::all(&s.db)?;
            let mut prune = s.db.batch();
            for mail in &mails {
                let done = matches!(mail.state, MailState::Sent | MailState::Failed | MailState::Cancelled);
                if done && mail.created_at + KEEP_DONE.as_millis() as u64 <= now {
                    data::delete(&mut prune, &mail.id);
                }
            }
            prune.commit()?;
            Ok(mails.into_iter().filter(|m| matches!(m.state, MailState::Queued | MailState::Failing)).collect())
        })
        .await;
        let due: Vec<Mail> = match due {
            Ok(due) => due,
            Err(err) => {
                tracing::warn!("cannot read the mail queue: {err}");
                Vec::new()
            }
        };
        let now = util::now_ms();
        let mut next_wake: Option<u64> = None;
        for mail in due {
            if mail.next_attempt_at > now {
                next_wake = Some(next_wake.map_or(mail.next_attempt_at, |n| n.min(mail.next_attempt_at)));
                continue;
            }
            if let Some(retry_at) = attempt(&s, mail).await {
                next_wake = Some(next_wake.map_or(retry_at, |n| n.min(retry_at)));
            }
        }
        let sleep = next_wake
            .map_or(Duration::from_secs(3600), |at| Duration::from_millis(at.saturating_sub(util::now_ms()).max(50)));
        tokio::select! {
            _ = s.mail.wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

/// Try one mail; the time of its next try if it should be tried again.
/// Whether the server refused this mail itself (a bad address, say) rather
/// than porch's login: authentication failures are the admin's to fix in the
/// config, so those mails wait and go out once the login works.
fn refused_for_good(error: &lettre::transport::smtp::Error) -> bool {
    error.is_permanent() && !matches!(error.status().map(u16::from), Some(530 | 534 | 535 | 538))
}

async fn attempt(s: &Arc<Services>, mut mail: Mail) -> Option<u64> {
    let transport = s.mail.transport.as_ref()?;
    // Read again: it may have been cancelled since the queue was read.
    let current = blocking(s, {
        let id = mail.id.clone();
        move |s| data::get(&s.db, &id)
    })
    .await;
    match current {
        Ok(Some(current)) if matches!(current.state, MailState::Queued | MailState::Failing) => mail = current,
        _ => return None,
    }
    let result = match build(&s.mail.from, &mail) {
        Ok(message) => transport.send(message).await.map_err(|e| (refused_for_good(&e), e.to_string())),
        Err(why) => Err((true, why)),
    };
    mail.attempts += 1;
    let retry_at = match result {
        Ok(_) => {
            tracing::info!(to = %mail.to, subject = %mail.subject, attempts = mail.attempts, "mail sent");
            mail.state = MailState::Sent;
            mail.sent_at = Some(util::now_ms());
            mail.last_error = None;
            mail.text = None;
            mail.html = None;
            None
        }
        Err((true, why)) => {
            tracing::warn!(to = %mail.to, "the mail server refused a mail for good: {why}");
            mail.state = MailState::Failed;
            mail.last_error = Some(why);
            None
        }
        Err((false, why)) => {
            let max = s.settings.raw.email.max_retry_interval.max(Duration::from_millis(100));
            let wait = FIRST_RETRY.saturating_mul(1 << mail.attempts.min(16).saturating_sub(1)).min(max);
            tracing::warn!(
                to = %mail.to, attempts = mail.attempts,
                "cannot send a mail now ({why}); trying again in {} s", wait.as_secs()
            );
            mail.state = MailState::Failing;
            mail.last_error = Some(why);
            mail.next_attempt_at = util::now_ms() + wait.as_millis() as u64;
            Some(mail.next_attempt_at)
        }
    };
    let id = mail.id.clone();
    // Saved only if it was not withdrawn meanwhile.
    let saved = blocking(s, move |s| match data::get(&s.db, &mail.id)? {
        Some(current) if current.state == MailState::Cancelled => Ok(()),
        _ => data::save(&s.db, &mail),
    })
    .await;
    if let Err(err) = saved {
        tracing::warn!(mail = %id, "cannot record a mail's delivery: {err}");
    }
    retry_at
}

fn build(from: &Mailbox, mail: &Mail) -> std::result::Result<Message, String> {
    let to: Mailbox = mail.to.parse().map_err(|e| format!("`{}` is not a mail address: {e}", mail.to))?;
    Message::builder()
        .from(from.clone())
        .to(to)
        .subject(mail.subject.clone())
        .multipart(MultiPart::alternative_plain_html(
            mail.text.clone().unwrap_or_default(),
            mail.html.clone().unwrap_or_default(),
        ))
        .map_err(|e| format!("cannot build the mail: {e}"))
}

/// `<`, `>`, `&` and quotes escaped, for text put into a mail's HTML part.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
