//! Token-bucket rate limiting keyed by client address (or, for
//! federation, by server name).

use std::{collections::HashMap, hash::Hash, net::IpAddr, sync::Mutex, time::Instant};

pub struct RateLimiter<K = IpAddr> {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<K, (f64, Instant)>>,
}

impl<K: Hash + Eq> RateLimiter<K> {
    pub fn new(per_second: f64, burst: u32) -> Self {
        Self { per_second, burst: f64::from(burst), buckets: Mutex::new(HashMap::new()) }
    }

    /// Take one token for `key`; on refusal, the milliseconds until one is free.
    pub fn check(&self, key: K) -> Result<(), u64> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("rate limiter poisoned");
        if buckets.len() > 100_000 {
            // Drop full buckets: they carry no information.
            let (rate, burst) = (self.per_second, self.burst);
            buckets.retain(|_, (tokens, at)| *tokens + at.elapsed().as_secs_f64() * rate < burst);
        }
        let (tokens, at) = buckets.entry(key).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.per_second).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err((((1.0 - *tokens) / self.per_second) * 1000.0).ceil() as u64)
        }
    }
}

/// What a user does that is limited per user (`rate_limits.*`), whatever
/// address they come from.
#[derive(Clone, Copy, Debug)]
pub enum UserAction {
    SendEvent,
    CreateRoom,
    Invite,
    Upload,
}

pub struct UserLimits {
    events: RateLimiter<ruma::OwnedUserId>,
    room_creations: RateLimiter<ruma::OwnedUserId>,
    invites: RateLimiter<ruma::OwnedUserId>,
    uploads: RateLimiter<ruma::OwnedUserId>,
}

impl UserLimits {
    pub fn new(limits: &crate::config::RateLimits) -> Self {
        Self {
            events: RateLimiter::new(limits.events_per_second, limits.events_burst),
            room_creations: RateLimiter::new(limits.room_creations_per_second, limits.room_creations_burst),
            invites: RateLimiter::new(limits.invites_per_second, limits.invites_burst),
            uploads: RateLimiter::new(limits.uploads_per_second, limits.uploads_burst),
        }
    }

    /// Take one token for `user` doing `action`; 429 `M_LIMIT_EXCEEDED` when over.
    pub fn check(&self, user: &ruma::UserId, action: UserAction) -> crate::error::Result<()> {
        let limiter = match action {
            UserAction::SendEvent => &self.events,
            UserAction::CreateRoom => &self.room_creations,
            UserAction::Invite => &self.invites,
            UserAction::Upload => &self.uploads,
        };
        limiter.check(user.to_owned()).map_err(crate::error::Error::limit_exceeded)
    }
}
