//! porch-load: load and latency measurements for any Matrix homeserver (porch,
//! Synapse, ...) over the client-server API.
//!
//! Every run registers fresh users under a random prefix, so runs against the
//! same server never collide. Accounts come from `POST /_matrix/client/v3/register`
//! with `m.login.dummy` (open registration), or, with `--shared-secret`, from
//! Synapse-style shared-secret registration at `/_synapse/admin/v1/register`.
//! Rate limiting (429 `M_LIMIT_EXCEEDED`) is honoured by waiting
//! `retry_after_ms` and retrying.
//!
//! Each scenario prints a short report. With `--json` the report goes to
//! stderr and stdout carries exactly one JSON object.
//!
//! ```text
//! # 20 clients each sending 200 messages into one room, as fast as they can
//! porch-load --url http://127.0.0.1:8008 send --clients 20 --messages 200
//!
//! # send-to-/sync delivery latency over 100 messages, as JSON
//! porch-load --url http://127.0.0.1:8008 latency --samples 100 --json
//!
//! # cost of a fresh initial /sync for a user in 200 rooms, on Synapse
//! porch-load --url http://127.0.0.1:8008 --shared-secret s3cret initial-sync --rooms 200
//!
//! # 500 guests arriving through one porch guest link at once
//! porch-load --url http://127.0.0.1:8008 guest-burst --guests 500 --link-token abc123
//! ```

use std::{
    collections::BTreeMap,
    fmt,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};
use hmac::{Hmac, Mac};
use rand::Rng;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha1::Sha1;

/// Load and latency measurements for a Matrix homeserver.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Base URL of the client-server API.
    #[arg(long, global = true, default_value = "http://127.0.0.1:8008")]
    url: String,
    /// Register users through Synapse shared-secret registration with this secret.
    #[arg(long, global = true)]
    shared_secret: Option<String>,
    /// Print one JSON object on stdout (the human report goes to stderr).
    #[arg(long, global = true)]
    json: bool,
    /// Process id of the server (on this machine): its resident memory and
    /// CPU time are read from /proc before and after the scenario and reported.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// N clients in one room, each sending M messages as fast as it can.
    Send {
        /// Concurrent sending clients, one user each.
        #[arg(long, default_value_t = 10)]
        clients: usize,
        /// Messages each client sends.
        #[arg(long, default_value_t = 100)]
        messages: usize,
    },
    /// Time from sending a message to seeing it in another user's /sync.
    Latency {
        /// Messages to time, sent one at a time.
        #[arg(long, default_value_t = 100)]
        samples: usize,
    },
    /// N idle users long-poll /sync, each in a room of their own, while
    /// messages are sent one at a time in a busy room: the delivery
    /// latency there, and (with --server-pid) the server's CPU per message.
    IdleSyncers {
        /// Idle long-polling users.
        #[arg(long, default_value_t = 1000)]
        syncers: usize,
        /// Messages sent (one at a time) in the busy room.
        #[arg(long, default_value_t = 200)]
        samples: usize,
        /// Make the idle users and their rooms but do not long-poll: the
        /// cost of a larger database apart from that of waiting syncs.
        #[arg(long)]
        no_poll: bool,
    },
    /// Messages from users of a second server (--remote-url, federating
    /// with this one) into a room here, sent as fast as that server takes
    /// them: how fast they arrive here, in transactions of up to 50 PDUs.
    Federation {
        /// Client-server API of the second server.
        #[arg(long)]
        remote_url: String,
        /// Messages sent in all.
        #[arg(long, default_value_t = 500)]
        messages: usize,
        /// Concurrent senders on the second server.
        #[arg(long, default_value_t = 4)]
        senders: usize,
    },
    /// Time a fresh initial /sync for a user in R rooms, then incremental
    /// ones, each after a new message in one of the rooms.
    InitialSync {
        /// Rooms the user is in, each with two messages.
        #[arg(long, default_value_t = 50)]
        rooms: usize,
    },
    /// Simplified sliding sync as Element X asks for it, for a user in R
    /// rooms: a new connection's first response (a window of 20 rooms,
    /// then every room), then incremental ones, each after a new message
    /// in one of the rooms, and one where nothing changed.
    SlidingSync {
        /// Rooms the user is in, each with two messages.
        #[arg(long, default_value_t = 500)]
        rooms: usize,
    },
    /// S senders in one room while the room's member count grows: the
    /// send rate at each size (idle members are added between rounds).
    RoomSize {
        /// Concurrent senders, members themselves.
        #[arg(long, default_value_t = 8)]
        senders: usize,
        /// Messages each sender sends per round.
        #[arg(long, default_value_t = 100)]
        messages: usize,
        /// Member counts to measure at, comma-separated (senders included).
        #[arg(long, value_delimiter = ',', default_value = "8,32,128,512")]
        members: Vec<usize>,
    },
    /// Full-text search: M messages spread over R rooms, then timed
    /// `/search` queries for common, rare and two-word terms.
    Search {
        /// Rooms the searching user is in.
        #[arg(long, default_value_t = 10)]
        rooms: usize,
        /// Messages sent in all, eight words each, from a 1,000-word vocabulary.
        #[arg(long, default_value_t = 5000)]
        messages: usize,
        /// Queries timed per kind.
        #[arg(long, default_value_t = 50)]
        queries: usize,
    },
    /// N accounts registered with a password, C at a time, then each
    /// logged in once: the cost of password hashing, and what it leaves in memory.
    Accounts {
        /// Accounts registered (and then logged in).
        #[arg(long, default_value_t = 200)]
        accounts: usize,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// N concurrent joins through one porch guest link.
    GuestBurst {
        /// Concurrent join requests.
        #[arg(long, default_value_t = 100)]
        guests: usize,
        /// Token of an existing guest link.
        #[arg(long)]
        link_token: String,
    },
}

/// How many times one request is retried after 429 responses.
const MAX_RATE_LIMIT_RETRIES: u32 = 50;
/// Incremental syncs timed in `initial-sync`.
const INCREMENTAL_SAMPLES: usize = 50;
/// Workers used to create rooms in `initial-sync`.
const SETUP_WORKERS: usize = 8;
/// Prefix of the client-server API paths.
const V3: &str = "/_matrix/client/v3";

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("porch-load: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    // reqwest is built without a bundled crypto provider; https needs one.
    // An error only means a provider is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http =
        reqwest::Client::builder().timeout(Duration::from_secs(120)).build().context("cannot build the HTTP client")?;
    let api = Api {
        http,
        base: cli.url.trim_end_matches('/').to_owned(),
        secret: cli.shared_secret,
        prefix: format!("load{}_", random_lowercase(8)),
    };
    let rss_before = cli.server_pid.map(resident_mb).transpose()?;
    let cpu_before = cli.server_pid.map(cpu_seconds).transpose()?;
    let (mut human, mut report) = match cli.scenario {
        Scenario::Send { clients, messages } => send(&api, clients, messages).await?,
        Scenario::Latency { samples } => latency(&api, samples).await?,
        Scenario::Federation { remote_url, messages, senders } => {
            let remote = Api { base: remote_url.trim_end_matches('/').to_owned(), ..api.clone() };
            federation(&api, &remote, messages, senders).await?
        }
        Scenario::IdleSyncers { syncers, samples, no_poll } => {
            idle_syncers(&api, syncers, samples, !no_poll, cli.server_pid).await?
        }
        Scenario::InitialSync { rooms } => initial_sync(&api, rooms).await?,
        Scenario::SlidingSync { rooms } => sliding_sync(&api, rooms).await?,
        Scenario::RoomSize { senders, messages, members } => room_size(&api, senders, messages, &members).await?,
        Scenario::Search { rooms, messages, queries } => search(&api, rooms, messages, queries).await?,
        Scenario::GuestBurst { guests, link_token } => guest_burst(&api, guests, &link_token).await?,
        Scenario::Accounts { accounts: count, concurrency } => accounts(&api, count, concurrency).await?,
    };
    if let (Some(pid), Some(before), Some(cpu_before)) = (cli.server_pid, rss_before, cpu_before) {
        let after = resident_mb(pid)?;
        let cpu = cpu_seconds(pid)? - cpu_before;
        human.push_str(&format!("\n  server RSS {before:.0} MB before, {after:.0} MB after; CPU {cpu:.2} s in all"));
        report["server_rss_mb"] = json!({ "before": before, "after": after });
        report["server_cpu_s"] = json!(cpu);
    }
    if cli.json {
        eprintln!("{human}");
        println!("{report}");
    } else {
        println!("{human}");
    }
    Ok(())
}

/// A logged-in account.
#[derive(Clone)]
struct User {
    user_id: String,
    token: String,
    password: String,
}

/// The HTTP client plus what every request needs. Cheap to clone.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
    secret: Option<String>,
    prefix: String,
}

impl Api {
    /// One request, whatever the status; only transport errors are errors.
    async fn attempt(
        &self,
        method: &Method,
        path: &str,
        user: Option<&User>,
        body: Option<&Value>,
    ) -> Result<(StatusCode, String)> {
        let mut req = self.http.request(method.clone(), format!("{}{path}", self.base));
        if let Some(user) = user {
            req = req.bearer_auth(&user.token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let failed = || format!("{method} {path} failed");
        let resp = req.send().await.with_context(failed)?;
        let status = resp.status();
        Ok((status, resp.text().await.with_context(failed)?))
    }

    /// A request that must succeed, waiting out rate limits; returns the raw body.
    async fn request(&self, method: Method, path: &str, user: Option<&User>, body: Option<&Value>) -> Result<String> {
        for _ in 0..=MAX_RATE_LIMIT_RETRIES {
            let (status, text) = self.attempt(&method, path, user, body).await?;
            if status == StatusCode::TOO_MANY_REQUESTS {
                let wait = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["retry_after_ms"].as_u64())
                    .unwrap_or(1000);
                tokio::time::sleep(Duration::from_millis(wait.max(10))).await;
            } else if status.is_success() {
                return Ok(text);
            } else {
                bail!("{method} {path} returned {status}: {text}");
            }
        }
        bail!("{method} {path} was still rate limited after {MAX_RATE_LIMIT_RETRIES} retries")
    }

    /// Like [`Api::request`], parsing the body as JSON.
    async fn call(&self, method: Method, path: &str, user: Option<&User>, body: Option<&Value>) -> Result<Value> {
        let text = self.request(method.clone(), path, user, body).await?;
        serde_json::from_str(&text).with_context(|| format!("{method} {path} sent bad JSON: {text}"))
    }

    async fn register(&self, name: &str) -> Result<User> {
        let username = format!("{}{name}", self.prefix);
        let password = format!("pw-{}", random_lowercase(16));
        let resp = match &self.secret {
            None => {
                let auth = json!({ "type": "m.login.dummy" });
                let body = json!({ "username": username, "password": password, "auth": auth });
                self.call(Method::POST, &format!("{V3}/register"), None, Some(&body)).await?
            }
            Some(secret) => {
                let path = "/_synapse/admin/v1/register";
                let nonce = str_field(&self.call(Method::GET, path, None, None).await?, "nonce")?;
                let mac = shared_secret_mac(secret, &nonce, &username, &password)?;
                let body = json!({
                    "nonce": nonce,
                    "username": username,
                    "password": password,
                    "admin": false,
                    "mac": mac,
                });
                self.call(Method::POST, path, None, Some(&body)).await?
            }
        };
        let (user_id, token) = (str_field(&resp, "user_id")?, str_field(&resp, "access_token")?);
        Ok(User { user_id, token, password })
    }

    /// A password login on a new device (the session is not kept).
    async fn login(&self, name: &str, user: &User) -> Result<()> {
        let username = format!("{}{name}", self.prefix);
        let body = json!({
            "type": "m.login.password",
            "identifier": { "type": "m.id.user", "user": username },
            "password": user.password,
        });
        self.call(Method::POST, &format!("{V3}/login"), None, Some(&body)).await?;
        Ok(())
    }

    /// Register `count` users concurrently.
    async fn register_many(&self, count: usize) -> Result<Vec<User>> {
        let tasks = (0..count)
            .map(|i| {
                let api = self.clone();
                tokio::spawn(async move { api.register(&format!("u{i}")).await })
            })
            .collect();
        join_all(tasks).await
    }

    async fn create_room(&self, user: &User) -> Result<String> {
        let body = json!({ "preset": "public_chat" });
        let path = format!("{V3}/createRoom");
        let resp = self.call(Method::POST, &path, Some(user), Some(&body));
        str_field(&resp.await?, "room_id")
    }

    async fn join(&self, user: &User, room_id: &str) -> Result<()> {
        let path = format!("{V3}/join/{}", encode(room_id));
        self.call(Method::POST, &path, Some(user), Some(&json!({}))).await?;
        Ok(())
    }

    /// Join a room another server holds, through that server.
    async fn join_via(&self, user: &User, room_id: &str, server: &str) -> Result<()> {
        let path = format!("{V3}/join/{}?server_name={}", encode(room_id), encode(server));
        self.call(Method::POST, &path, Some(user), Some(&json!({}))).await?;
        Ok(())
    }

    /// All of `users` join the room, concurrently.
    async fn join_many(&self, users: &[User], room_id: &str) -> Result<()> {
        let joins = users
            .iter()
            .map(|user| {
                let (api, user, room_id) = (self.clone(), user.clone(), room_id.to_owned());
                tokio::spawn(async move { api.join(&user, &room_id).await })
            })
            .collect();
        join_all(joins).await?;
        Ok(())
    }

    async fn send_text(&self, user: &User, room_id: &str, txn_id: &str, text: &str) -> Result<()> {
        let (room, txn) = (encode(room_id), encode(txn_id));
        let path = format!("{V3}/rooms/{room}/send/m.room.message/{txn}");
        let body = json!({ "msgtype": "m.text", "body": text });
        self.call(Method::PUT, &path, Some(user), Some(&body)).await?;
        Ok(())
    }

    /// A `/sync` (initial when `since` is `None`), returning the raw body.
    async fn sync(&self, user: &User, since: Option<&str>, timeout_ms: u64) -> Result<String> {
        self.sync_with(user, since, timeout_ms, None).await
    }

    /// A `/sync` with a filter (JSON).
    async fn sync_with(
        &self,
        user: &User,
        since: Option<&str>,
        timeout_ms: u64,
        filter: Option<&str>,
    ) -> Result<String> {
        let mut path = format!("{V3}/sync?timeout={timeout_ms}");
        if let Some(since) = since {
            path.push_str(&format!("&since={}", encode(since)));
        }
        if let Some(filter) = filter {
            path.push_str(&format!("&filter={}", encode(filter)));
        }
        self.request(Method::GET, &path, Some(user), None).await
    }
}

type Report = (String, Value);

async fn send(api: &Api, clients: usize, messages: usize) -> Result<Report> {
    if clients == 0 {
        bail!("--clients must be at least 1");
    }
    let users = api.register_many(clients).await?;
    let room_id = api.create_room(&users[0]).await?;
    api.join_many(&users[1..], &room_id).await?;
    let (latencies, elapsed) = send_burst(api, &users, &room_id, messages, "").await?;
    let total = latencies.len();
    let rate = total as f64 / elapsed.max(f64::EPSILON);
    let lat = Latency::of(latencies);
    let human = format!(
        "send: {clients} clients x {messages} messages = {total} in {elapsed:.2} s, \
         {rate:.1} msg/s\n  per-request latency {lat}"
    );
    let report = json!({
        "scenario": "send", "clients": clients, "messages_per_client": messages,
        "total_messages": total, "elapsed_s": elapsed, "messages_per_s": rate,
        "latency_ms": lat.json(),
    });
    Ok((human, report))
}

/// Every user sends `messages` messages into the room at once; their
/// per-request latencies and the wall time.
async fn send_burst(api: &Api, users: &[User], room_id: &str, messages: usize, round: &str) -> Result<(Vec<f64>, f64)> {
    let start = Instant::now();
    let senders = users
        .iter()
        .enumerate()
        .map(|(c, user)| {
            let (api, user, room_id, round) = (api.clone(), user.clone(), room_id.to_owned(), round.to_owned());
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(messages);
                for m in 0..messages {
                    let (txn, text) = (format!("{round}c{c}m{m}"), format!("message {m} from client {c}"));
                    let sent = Instant::now();
                    api.send_text(&user, &room_id, &txn, &text).await?;
                    latencies.push(millis(sent.elapsed()));
                }
                Ok::<_, anyhow::Error>(latencies)
            })
        })
        .collect();
    let latencies: Vec<f64> = join_all(senders).await?.into_iter().flatten().collect();
    Ok((latencies, start.elapsed().as_secs_f64()))
}

async fn room_size(api: &Api, senders: usize, messages: usize, sizes: &[usize]) -> Result<Report> {
    if senders == 0 || sizes.iter().any(|&n| n < senders) || !sizes.is_sorted() {
        bail!("--members must be ascending and each at least --senders");
    }
    let users = api.register_many(sizes.last().copied().unwrap_or(senders)).await?;
    let room_id = api.create_room(&users[0]).await?;
    let mut joined = 1;
    let mut human = format!("room-size: {senders} senders x {messages} messages per round");
    let mut rounds = Vec::new();
    let mut first_rate = None;
    for &size in sizes {
        api.join_many(&users[joined..size], &room_id).await?;
        joined = size;
        let (latencies, elapsed) = send_burst(api, &users[..senders], &room_id, messages, &format!("r{size}")).await?;
        let rate = latencies.len() as f64 / elapsed.max(f64::EPSILON);
        let ratio = rate / *first_rate.get_or_insert(rate);
        let lat = Latency::of(latencies);
        human.push_str(&format!("\n  {size} members: {rate:.1} msg/s (x{ratio:.2}), latency {lat}"));
        rounds.push(
            json!({ "members": size, "messages_per_s": rate, "ratio_to_first": ratio, "latency_ms": lat.json() }),
        );
    }
    let report =
        json!({ "scenario": "room-size", "senders": senders, "messages_per_sender": messages, "rounds": rounds });
    Ok((human, report))
}

async fn latency(api: &Api, samples: usize) -> Result<Report> {
    let users = api.register_many(2).await?;
    let latencies = deliveries(api, &users[0], &users[1], samples).await?;
    let lat = Latency::of(latencies);
    let human = format!("latency: {samples} messages, send to /sync delivery {lat}");
    let report = json!({ "scenario": "latency", "samples": samples, "latency_ms": lat.json() });
    Ok((human, report))
}

async fn federation(local: &Api, remote: &Api, messages: usize, senders: usize) -> Result<Report> {
    if senders == 0 || messages < senders {
        bail!("--senders must be at least 1 and at most --messages");
    }
    let receiver = local.register("fed_receiver").await?;
    let server = receiver.user_id.split_once(':').map(|(_, s)| s.to_owned()).context("a user id without a server")?;
    let room_id = local.create_room(&receiver).await?;
    let users = remote.register_many(senders).await?;
    for user in &users {
        remote.join_via(user, &room_id, &server).await?;
    }
    // Every sender's join is here before the clock starts.
    let mut since = str_field(&serde_json::from_str(&local.sync(&receiver, None, 0).await?)?, "next_batch")?;
    let path = format!("{V3}/rooms/{}/joined_members", encode(&room_id));
    let deadline = Instant::now() + Duration::from_secs(60);
    while local.call(Method::GET, &path, Some(&receiver), None).await?["joined"].as_object().map_or(0, |j| j.len())
        < senders + 1
    {
        if Instant::now() > deadline {
            bail!("the second server's users did not join within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = Instant::now();
    let per_sender = messages / senders;
    let sending = send_burst(remote, &users, &room_id, per_sender, "fed");
    let total = per_sender * senders;
    // Every message counts, however many arrive at once.
    let filter = json!({ "room": { "timeline": { "limit": total } } }).to_string();
    let receiving = async {
        let mut seen = 0;
        while seen < total {
            let text = local.sync_with(&receiver, Some(&since), 30_000, Some(&filter)).await?;
            let body: Value = serde_json::from_str(&text)?;
            since = str_field(&body, "next_batch")?;
            seen += timeline_bodies(&body).iter().filter(|b| b.starts_with("message ")).count();
            if started.elapsed() > Duration::from_secs(600) {
                bail!("only {seen} of {total} messages arrived within 10 minutes");
            }
        }
        Ok::<_, anyhow::Error>(started.elapsed().as_secs_f64())
    };
    let (sent, arrived) = tokio::join!(sending, receiving);
    let (latencies, send_elapsed) = sent?;
    let arrived = arrived?;
    let send_rate = latencies.len() as f64 / send_elapsed.max(f64::EPSILON);
    let rate = total as f64 / arrived.max(f64::EPSILON);
    let human = format!(
        "federation: {total} messages from {senders} users of {} into a room of {server}\n  \
         sent there at {send_rate:.0} msg/s; all here after {arrived:.2} s: {rate:.0} msg/s received",
        remote.base
    );
    let report = json!({
        "scenario": "federation", "messages": total, "senders": senders,
        "sent_per_s": send_rate, "arrived_after_s": arrived, "received_per_s": rate,
    });
    Ok((human, report))
}

async fn idle_syncers(
    api: &Api,
    syncers: usize,
    samples: usize,
    poll: bool,
    server_pid: Option<u32>,
) -> Result<Report> {
    let users = api.register_many(syncers + 2).await?;
    let (idle, busy) = users.split_at(syncers);
    // Each idle user in a room of their own, long-polling from its start.
    let mut creators = Vec::new();
    for chunk in idle.chunks(idle.len().div_ceil(SETUP_WORKERS).max(1)) {
        let (api, chunk) = (api.clone(), chunk.to_vec());
        creators.push(tokio::spawn(async move {
            let mut polls = Vec::new();
            for user in chunk {
                api.create_room(&user).await?;
                if !poll {
                    continue;
                }
                let initial: Value = serde_json::from_str(&api.sync(&user, None, 0).await?)?;
                let mut since = str_field(&initial, "next_batch")?;
                let api = api.clone();
                polls.push(tokio::spawn(async move {
                    loop {
                        let text = api.sync(&user, Some(since.as_str()), 30_000).await?;
                        since = str_field(&serde_json::from_str(&text)?, "next_batch")?;
                    }
                    #[allow(unreachable_code)]
                    Ok::<(), anyhow::Error>(())
                }));
            }
            Ok::<_, anyhow::Error>(polls)
        }));
    }
    let polls: Vec<_> = join_all(creators).await?.into_iter().flatten().collect();
    // Let every long poll reach the server, and the set-up's writes settle
    // (compaction would be counted as the messages' CPU).
    tokio::time::sleep(Duration::from_secs(5)).await;
    eprintln!("idle-syncers: {} long polls waiting; measuring", polls.len());
    let cpu_before = server_pid.map(cpu_seconds).transpose()?;
    let started = Instant::now();
    let latencies = deliveries(api, &busy[0], &busy[1], samples).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = match (server_pid, cpu_before) {
        (Some(pid), Some(before)) => Some(cpu_seconds(pid)? - before),
        _ => None,
    };
    let still_polling = polls.iter().filter(|p| !p.is_finished()).count();
    for poll in &polls {
        poll.abort();
    }
    if poll && still_polling < syncers {
        bail!("{} of the {syncers} idle /sync loops failed", syncers - still_polling);
    }
    let lat = Latency::of(latencies);
    let mut human = format!(
        "idle-syncers: {syncers} idle long-polling users, {samples} messages in a busy room in {elapsed:.1} s\n  \
         send to /sync delivery {lat}"
    );
    if !poll {
        human.push_str("\n  (users and rooms made, none long-polling)");
    }
    let mut report = json!({
        "scenario": "idle-syncers", "syncers": syncers, "polling": poll, "samples": samples, "latency_ms": lat.json(),
    });
    if let Some(cpu) = cpu {
        let per_message = cpu * 1000.0 / samples.max(1) as f64;
        human.push_str(&format!(
            "
  server CPU {cpu:.2} s, {per_message:.2} ms per message"
        ));
        report["server_cpu_ms_per_message"] = json!(per_message);
    }
    Ok((human, report))
}

/// `samples` messages from `sender`, one at a time, each timed until it
/// shows in the long-polling `/sync` of `receiver` (who joins the room).
async fn deliveries(api: &Api, sender: &User, receiver: &User, samples: usize) -> Result<Vec<f64>> {
    let (sender, receiver) = (sender.clone(), receiver.clone());
    let room_id = api.create_room(&sender).await?;
    api.join(&receiver, &room_id).await?;
    let initial: Value = serde_json::from_str(&api.sync(&receiver, None, 0).await?)?;
    let mut since = str_field(&initial, "next_batch")?;

    // The receiver long-polls /sync and reports every message body it sees,
    // stamped with the moment its response arrived.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<String>)>();
    let sync_api = api.clone();
    let mut receiver_task = tokio::spawn(async move {
        loop {
            let text = sync_api.sync(&receiver, Some(since.as_str()), 30_000).await?;
            let arrived = Instant::now();
            let resp: Value = serde_json::from_str(&text).context("/sync sent bad JSON")?;
            since = str_field(&resp, "next_batch")?;
            let bodies = timeline_bodies(&resp);
            if !bodies.is_empty() && tx.send((arrived, bodies)).is_err() {
                return Ok::<(), anyhow::Error>(());
            }
        }
    });

    let mut latencies = Vec::with_capacity(samples);
    for i in 0..samples {
        let text = format!("{}latency-{i}", api.prefix);
        let sent = Instant::now();
        api.send_text(&sender, &room_id, &format!("lat{i}"), &text).await?;
        let arrived = loop {
            match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
                Err(_) => bail!("message {i} did not reach the receiver's /sync within 60 s"),
                Ok(None) => {
                    return match (&mut receiver_task).await {
                        Ok(Err(err)) => Err(err.context("the receiver's /sync loop failed")),
                        _ => Err(anyhow!("the receiver's /sync loop stopped")),
                    };
                }
                Ok(Some((at, bodies))) if bodies.contains(&text) => break at,
                Ok(Some(_)) => {}
            }
        };
        latencies.push(millis(arrived.saturating_duration_since(sent)));
    }
    receiver_task.abort();
    Ok(latencies)
}

/// A new user in `rooms` rooms of their own, each with two messages.
async fn user_with_rooms(api: &Api, name: &str, rooms: usize) -> Result<(User, Vec<String>)> {
    let user = api.register(name).await?;
    // Split the room creation over a few workers, each working sequentially.
    let workers = (0..SETUP_WORKERS.min(rooms))
        .map(|w| {
            let (api, user) = (api.clone(), user.clone());
            tokio::spawn(async move {
                let mut made = Vec::new();
                for r in (w..rooms).step_by(SETUP_WORKERS) {
                    let room_id = api.create_room(&user).await?;
                    for m in 0..2 {
                        let text = format!("message {m} in room {r}");
                        api.send_text(&user, &room_id, &format!("r{r}m{m}"), &text).await?;
                    }
                    made.push(room_id);
                }
                Ok::<_, anyhow::Error>(made)
            })
        })
        .collect();
    let room_ids: Vec<String> = join_all(workers).await?.into_iter().flatten().collect();
    Ok((user, room_ids))
}

async fn initial_sync(api: &Api, rooms: usize) -> Result<Report> {
    let (user, room_ids) = user_with_rooms(api, "sync", rooms).await?;

    let mut times = Vec::new();
    let mut bytes = 0;
    let mut since = String::new();
    for _ in 0..3 {
        let start = Instant::now();
        let body = api.sync(&user, None, 0).await?;
        times.push(millis(start.elapsed()));
        bytes = body.len();
        since = str_field(&serde_json::from_str(&body)?, "next_batch")?;
    }
    let lat = Latency::of(times);
    let (median, max) = (lat.p50, lat.max);
    // Then incremental syncs, each after one new message in one of the rooms.
    let mut incremental = Vec::new();
    for (i, room_id) in room_ids.iter().cycle().take(INCREMENTAL_SAMPLES.min(room_ids.len() * 4)).enumerate() {
        api.send_text(&user, room_id, &format!("inc{i}"), &format!("incremental {i}")).await?;
        let start = Instant::now();
        let body = api.sync(&user, Some(&since), 0).await?;
        incremental.push(millis(start.elapsed()));
        since = str_field(&serde_json::from_str(&body)?, "next_batch")?;
    }
    let inc = Latency::of(incremental);
    let human = format!(
        "initial-sync: {} in {rooms} rooms, fresh /sync median {median:.1} ms, \
         max {max:.1} ms, {bytes} bytes\n  incremental /sync after one new message: {inc}",
        user.user_id
    );
    let report = json!({
        "scenario": "initial-sync", "rooms": rooms, "runs": 3,
        "median_ms": median, "max_ms": max, "response_bytes": bytes,
        "incremental_ms": inc.json(),
    });
    Ok((human, report))
}

const SLIDING_SYNC_PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

/// Element X's room-list request: `end` is the window's last index.
fn room_list_request(end: usize) -> Value {
    let required_state: Vec<[&str; 2]> = [
        ["m.room.name", ""],
        ["m.room.encryption", ""],
        ["m.room.member", "$LAZY"],
        ["m.room.member", "$ME"],
        ["m.room.topic", ""],
        ["m.room.avatar", ""],
        ["m.room.canonical_alias", ""],
        ["m.room.power_levels", ""],
        ["m.room.join_rules", ""],
        ["m.room.tombstone", ""],
        ["m.room.create", ""],
        ["m.room.history_visibility", ""],
    ]
    .into();
    json!({
        "conn_id": "room-list",
        "lists": { "all_rooms": { "ranges": [[0, end]], "timeline_limit": 1, "required_state": required_state } },
        "extensions": {
            "account_data": { "enabled": true },
            "receipts": { "enabled": true, "rooms": ["*"] },
            "typing": { "enabled": true },
        },
    })
}

async fn sliding_sync(api: &Api, rooms: usize) -> Result<Report> {
    let (user, room_ids) = user_with_rooms(api, "sliding", rooms).await?;
    let post = |pos: Option<&str>, body: &Value| {
        let path = match pos {
            Some(pos) => format!("{SLIDING_SYNC_PATH}?timeout=0&pos={pos}"),
            None => format!("{SLIDING_SYNC_PATH}?timeout=0"),
        };
        let (api, user, body) = (api.clone(), user.clone(), body.clone());
        async move { api.request(Method::POST, &path, Some(&user), Some(&body)).await }
    };
    // First responses: a window of 20 rooms, then every room.
    let mut first = Vec::new();
    for end in [19, rooms.saturating_sub(1)] {
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..3 {
            let start = Instant::now();
            let body = post(None, &room_list_request(end)).await?;
            times.push(millis(start.elapsed()));
            bytes = body.len();
        }
        first.push((end + 1, Latency::of(times).p50, bytes));
    }
    // Incremental: each after one new message, on the connection of the full window.
    let request = room_list_request(rooms.saturating_sub(1));
    let mut pos = str_field(&serde_json::from_str(&post(None, &request).await?)?, "pos")?;
    let mut incremental = Vec::new();
    for (i, room_id) in room_ids.iter().cycle().take(INCREMENTAL_SAMPLES.min(room_ids.len() * 4)).enumerate() {
        api.send_text(&user, room_id, &format!("ss{i}"), &format!("sliding {i}")).await?;
        let start = Instant::now();
        let body: Value = serde_json::from_str(&post(Some(&pos), &request).await?)?;
        incremental.push(millis(start.elapsed()));
        anyhow::ensure!(body["rooms"].get(room_id.as_str()).is_some(), "the room with the new message was not sent");
        pos = str_field(&body, "pos")?;
    }
    let mut unchanged = Vec::new();
    for _ in 0..INCREMENTAL_SAMPLES {
        let start = Instant::now();
        let body: Value = serde_json::from_str(&post(Some(&pos), &request).await?)?;
        unchanged.push(millis(start.elapsed()));
        pos = str_field(&body, "pos")?;
    }
    let (inc, idle) = (Latency::of(incremental), Latency::of(unchanged));
    let firsts: Vec<String> =
        first.iter().map(|(window, ms, bytes)| format!("{window} rooms {ms:.1} ms, {bytes} bytes")).collect();
    let human = format!(
        "sliding-sync: {} in {rooms} rooms, first response (median of 3) {}\n  \
         incremental after one new message: {inc}\n  incremental with nothing new: {idle}",
        user.user_id,
        firsts.join("; "),
    );
    let report = json!({
        "scenario": "sliding-sync", "rooms": rooms,
        "first": first.iter().map(|(window, ms, bytes)| json!({ "window": window, "median_ms": ms, "response_bytes": bytes })).collect::<Vec<_>>(),
        "incremental_ms": inc.json(), "unchanged_ms": idle.json(),
    });
    Ok((human, report))
}

/// Word `rank` of the search vocabulary: distinct, pronounceable, never an English word.
fn vocabulary_word(rank: usize) -> String {
    const SYLLABLES: [&str; 16] =
        ["ka", "lo", "mi", "ru", "ze", "po", "ta", "ni", "su", "ve", "do", "qa", "fi", "go", "xu", "be"];
    let (a, b, c) = (rank % 16, (rank / 16) % 16, (rank / 256) % 16);
    format!("{}{}{}x", SYLLABLES[a], SYLLABLES[b], SYLLABLES[c])
}

/// A vocabulary rank drawn so that low ranks are common (roughly Zipf's law,
/// as in real text): rank ~ 1000^u - 1 for uniform u.
fn zipf_rank(rng: &mut impl Rng) -> usize {
    let u: f64 = rng.r#gen();
    ((1000f64.powf(u) - 1.0) as usize).min(999)
}

async fn search(api: &Api, rooms: usize, messages: usize, queries: usize) -> Result<Report> {
    let rooms = rooms.max(1);
    let user = api.register("search").await?;
    let mut room_ids = Vec::with_capacity(rooms);
    for _ in 0..rooms {
        room_ids.push(api.create_room(&user).await?);
    }
    let room_ids = std::sync::Arc::new(room_ids);
    let start = Instant::now();
    let workers = (0..SETUP_WORKERS.min(messages))
        .map(|w| {
            let (api, user, room_ids) = (api.clone(), user.clone(), room_ids.clone());
            tokio::spawn(async move {
                for m in (w..messages).step_by(SETUP_WORKERS) {
                    let text = {
                        let mut rng = rand::thread_rng();
                        (0..8).map(|_| vocabulary_word(zipf_rank(&mut rng))).collect::<Vec<_>>().join(" ")
                    };
                    api.send_text(&user, &room_ids[m % room_ids.len()], &format!("s{m}"), &text).await?;
                }
                Ok::<_, anyhow::Error>(())
            })
        })
        .collect();
    join_all(workers).await?;
    let send_rate = messages as f64 / start.elapsed().as_secs_f64();

    /// A kind of query: its name, the i-th search term, the ordering.
    type QueryKind = (&'static str, fn(usize) -> String, &'static str);
    let kinds: [QueryKind; 4] = [
        ("common word", |i| vocabulary_word(i % 3), "rank"),
        ("rare word", |i| vocabulary_word(900 + i % 100), "rank"),
        ("two words", |i| format!("{} {}", vocabulary_word(i % 5), vocabulary_word(10 + i % 20)), "rank"),
        ("common word, recent first", |i| vocabulary_word(i % 3), "recent"),
    ];
    let mut human = format!(
        "search: {messages} messages in {rooms} rooms, sent at {send_rate:.0} msg/s (indexed as they are stored)"
    );
    let mut figures = Vec::new();
    for (name, term, order) in kinds {
        let mut times = Vec::with_capacity(queries);
        let mut hits = 0u64;
        for i in 0..queries {
            let body = json!({ "search_categories": { "room_events": {
                "search_term": term(i), "order_by": order, "filter": { "limit": 10 },
            } } });
            let sent = Instant::now();
            let found = api.call(Method::POST, &format!("{V3}/search"), Some(&user), Some(&body)).await?;
            times.push(millis(sent.elapsed()));
            hits += found["search_categories"]["room_events"]["count"].as_u64().unwrap_or(0);
        }
        let lat = Latency::of(times);
        let mean_hits = hits / queries.max(1) as u64;
        human.push_str(&format!("\n  {name}: ~{mean_hits} matches, first page of 10 in {lat}"));
        figures.push(json!({ "query": name, "order_by": order, "mean_matches": mean_hits, "latency_ms": lat.json() }));
    }
    let report = json!({
        "scenario": "search", "rooms": rooms, "messages": messages, "queries_per_kind": queries,
        "send_msgs_per_s": send_rate, "queries": figures,
    });
    Ok((human, report))
}

async fn guest_burst(api: &Api, guests: usize, link_token: &str) -> Result<Report> {
    let path = format!("/_porch/client/v1/guest_links/{}/join", encode(link_token));
    let start = Instant::now();
    let tasks = (0..guests)
        .map(|i| {
            let (api, path) = (api.clone(), path.clone());
            tokio::spawn(async move {
                let body = json!({ "display_name": format!("Guest {i}") });
                let sent = Instant::now();
                // A transport error counts as a failure, not as a reason to stop.
                let failure = match api.attempt(&Method::POST, &path, None, Some(&body)).await {
                    Ok((status, _)) if status.is_success() => None,
                    Ok((status, _)) => Some(status.as_u16().to_string()),
                    Err(_) => Some("transport error".to_owned()),
                };
                Ok::<_, anyhow::Error>((millis(sent.elapsed()), failure))
            })
        })
        .collect();
    let results = join_all(tasks).await?;
    let elapsed = start.elapsed().as_secs_f64();

    let mut failures: BTreeMap<String, usize> = BTreeMap::new();
    for failure in results.iter().filter_map(|(_, failure)| failure.clone()) {
        *failures.entry(failure).or_default() += 1;
    }
    let failed: usize = failures.values().sum();
    let succeeded = guests - failed;
    let lat = Latency::of(results.into_iter().map(|(ms, _)| ms).collect());
    let by_status: Vec<String> = failures.iter().map(|(s, n)| format!("{s}: {n}")).collect();
    let by_status = if by_status.is_empty() { String::new() } else { format!(" ({})", by_status.join(", ")) };
    let human = format!(
        "guest-burst: {guests} joins in {elapsed:.2} s, {succeeded} ok, {failed} failed{by_status}\n  \
         latency {lat}"
    );
    let report = json!({
        "scenario": "guest-burst", "guests": guests, "succeeded": succeeded,
        "failed": failed, "failures_by_status": failures, "elapsed_s": elapsed,
        "latency_ms": lat.json(),
    });
    Ok((human, report))
}

/// Await every task in order, failing on the first error or panic.
/// Register `count` accounts, `concurrency` at a time, then log each in once.
async fn accounts(api: &Api, count: usize, concurrency: usize) -> Result<Report> {
    if count == 0 || concurrency == 0 {
        bail!("--accounts and --concurrency must be at least 1");
    }
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency));
    let start = Instant::now();
    let tasks = (0..count)
        .map(|i| {
            let (api, limit) = (api.clone(), limit.clone());
            tokio::spawn(async move {
                let _permit = limit.acquire_owned().await?;
                let name = format!("a{i}");
                let sent = Instant::now();
                let user = api.register(&name).await?;
                Ok::<_, anyhow::Error>((name, user, millis(sent.elapsed())))
            })
        })
        .collect();
    let registered = join_all(tasks).await?;
    let register_s = start.elapsed().as_secs_f64();
    let register_lat = Latency::of(registered.iter().map(|(_, _, ms)| *ms).collect());

    let start = Instant::now();
    let tasks = registered
        .into_iter()
        .map(|(name, user, _)| {
            let (api, limit) = (api.clone(), limit.clone());
            tokio::spawn(async move {
                let _permit = limit.acquire_owned().await?;
                let sent = Instant::now();
                api.login(&name, &user).await?;
                Ok::<_, anyhow::Error>(millis(sent.elapsed()))
            })
        })
        .collect();
    let login_lat = Latency::of(join_all(tasks).await?);
    let login_s = start.elapsed().as_secs_f64();
    let human = format!(
        "accounts: {count} registered in {register_s:.2} s ({:.1}/s), {concurrency} at a time\n  \
         register latency {register_lat}\n  {count} logins in {login_s:.2} s ({:.1}/s)\n  login latency {login_lat}",
        count as f64 / register_s.max(f64::EPSILON),
        count as f64 / login_s.max(f64::EPSILON),
    );
    let report = json!({
        "scenario": "accounts", "accounts": count, "concurrency": concurrency,
        "register_s": register_s, "register_latency_ms": register_lat.json(),
        "login_s": login_s, "login_latency_ms": login_lat.json(),
    });
    Ok((human, report))
}

/// CPU time (user and system) a local process has used, in seconds, from
/// /proc (whose clock ticks are 1/100 s on Linux).
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat: is --server-pid a running process here?"))?;
    // The command name (field 2) may hold spaces: count from after it.
    let rest = stat.rsplit_once(')').map(|(_, rest)| rest).ok_or_else(|| anyhow!("/proc/{pid}/stat is unreadable"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    // utime and stime are fields 14 and 15, i.e. 12 and 13 after the name.
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => Ok((user + system) / 100.0),
        _ => bail!("/proc/{pid}/stat has no CPU times"),
    }
}

/// Resident memory of a local process, in MB, from /proc.
fn resident_mb(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status: is --server-pid a running process here?"))?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .ok_or_else(|| anyhow!("/proc/{pid}/status has no VmRSS line"))?;
    Ok(kib / 1024.0)
}

async fn join_all<T>(tasks: Vec<tokio::task::JoinHandle<Result<T>>>) -> Result<Vec<T>> {
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(task.await.context("a worker task panicked")??);
    }
    Ok(out)
}

/// Nearest-rank percentile of an ascending slice; 0 when empty.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Summary of a set of durations in milliseconds.
struct Latency {
    p50: f64,
    p99: f64,
    max: f64,
}

impl Latency {
    fn of(mut ms: Vec<f64>) -> Self {
        ms.sort_by(f64::total_cmp);
        let max = ms.last().copied().unwrap_or(0.0);
        Self { p50: percentile(&ms, 50.0), p99: percentile(&ms, 99.0), max }
    }

    fn json(&self) -> Value {
        json!({ "p50": self.p50, "p99": self.p99, "max": self.max })
    }
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms", self.p50, self.p99, self.max)
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Percent-encode everything but the unreserved characters A-Z a-z 0-9 - _ . ~
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn random_lowercase(len: usize) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..len).map(|_| char::from(CHARS[rng.gen_range(0..CHARS.len())])).collect()
}

/// Synapse's registration MAC: HMAC-SHA1 over nonce, user, password and admin flag.
fn shared_secret_mac(secret: &str, nonce: &str, username: &str, password: &str) -> Result<String> {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).map_err(|e| anyhow!("bad shared secret: {e}"))?;
    for part in [nonce, "\0", username, "\0", password, "\0", "notadmin"] {
        mac.update(part.as_bytes());
    }
    Ok(hex::encode(mac.finalize().into_bytes()))
}

fn str_field(value: &Value, key: &str) -> Result<String> {
    let field = value[key].as_str().map(str::to_owned);
    field.ok_or_else(|| anyhow!("response has no string `{key}`: {value}"))
}

/// Bodies of all timeline events in joined rooms of a /sync response.
fn timeline_bodies(sync: &Value) -> Vec<String> {
    let Some(rooms) = sync["rooms"]["join"].as_object() else {
        return Vec::new();
    };
    rooms
        .values()
        .filter_map(|room| room["timeline"]["events"].as_array())
        .flatten()
        .filter_map(|event| event["content"]["body"].as_str().map(str::to_owned))
        .collect()
}
