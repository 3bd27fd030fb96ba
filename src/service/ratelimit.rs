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
