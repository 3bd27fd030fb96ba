//! Hourly clean-up of records that expire but are not always looked up
//! again: OpenID and login tokens, user-interactive auth sessions and month-old
//! notifications. (Guest rooms
//! have their own, finer-grained schedule in `guests`.)

use std::{sync::Arc, time::Duration};

use crate::{
    error::Result,
    service::{Services, push, tokens},
    util,
};

const EVERY: Duration = Duration::from_secs(3600);

/// Prune what expired as of `now` (ms).
pub fn run(s: &Services, now: u64) -> Result<()> {
    let expired_tokens = tokens::prune_expired(s, now)?;
    let sessions = s.uiaa.prune_expired(now)?;
    let notifications = push::prune_notifications(s, now)?;
    if expired_tokens + sessions + notifications > 0 {
        tracing::debug!(
            tokens = expired_tokens,
            sessions,
            notifications,
            "pruned expired OpenID and login tokens, auth sessions and notifications"
        );
    }
    Ok(())
}

pub fn spawn(services: Arc<Services>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVERY);
        loop {
            tick.tick().await;
            let s = services.clone();
            match tokio::task::spawn_blocking(move || run(&s, util::now_ms())).await {
                Ok(Err(err)) => tracing::warn!("housekeeping failed: {err}"),
                Err(err) => tracing::warn!("housekeeping panicked: {err}"),
                _ => {}
            }
        }
    });
}
