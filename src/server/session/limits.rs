//! Message rates, per user and per client address. Counted across every connection, so opening more
//! sockets (or tabs) does not buy a faster rate.

use super::SessionConfig;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::net::IpAddr;
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

pub struct MessageLimits {
    by_user: DefaultKeyedRateLimiter<Uuid>,
    by_address: DefaultKeyedRateLimiter<IpAddr>,
}

impl MessageLimits {
    pub fn new(config: &SessionConfig) -> Self {
        Self {
            by_user: RateLimiter::keyed(
                Quota::per_second(config.messages_per_second).allow_burst(config.burst),
            ),
            by_address: RateLimiter::keyed(
                Quota::per_second(config.address_per_second).allow_burst(config.address_burst),
            ),
        }
    }

    /// Counts one message of `user` from `ip`; refused with how long until one would be allowed.
    pub fn check(&self, user: Uuid, ip: IpAddr) -> Result<(), Duration> {
        let now = DefaultClock::default().now();
        let wait = |denied: governor::NotUntil<_>| denied.wait_time_from(now);
        self.by_user.check_key(&user).map_err(wait)?;
        self.by_address.check_key(&ip).map_err(wait)?;
        Ok(())
    }

    /// Drops the state of users and addresses whose allowance is full again.
    pub fn forget_idle(&self) {
        self.by_user.retain_recent();
        self.by_address.retain_recent();
    }
}

/// The longest a connection refuses later messages while waiting for a refused one to come again. A
/// client that gives up on it (or never retries) is not held up for longer.
pub const HOLD_AT_MOST: Duration = Duration::from_secs(10);

/// A message refused for its rate, which later messages may not overtake.
#[derive(Debug, Clone, Copy)]
pub struct Hold {
    pub id: Uuid,
    /// When the refused message will be accepted.
    pub retry_at: Instant,
    pub since: Instant,
}

impl Hold {
    /// Whether message `id` must wait behind the held one.
    pub fn blocks(&self, id: Uuid) -> bool {
        id != self.id && self.since.elapsed() < HOLD_AT_MOST
    }

    /// How long until the held message is accepted, as the error frame says it.
    pub fn retry_after(&self) -> Duration {
        self.retry_at
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    #[test]
    fn limits_count_per_user_and_per_address_across_connections() {
        let config = SessionConfig {
            messages_per_second: NonZeroU32::new(1).unwrap(),
            burst: NonZeroU32::new(2).unwrap(),
            address_per_second: NonZeroU32::new(1).unwrap(),
            address_burst: NonZeroU32::new(2).unwrap(),
            ..SessionConfig::default()
        };
        let limits = MessageLimits::new(&config);
        let (ann, bo) = (Uuid::new_v4(), Uuid::new_v4());
        let home: IpAddr = "192.0.2.1".parse().unwrap();
        let away: IpAddr = "198.51.100.2".parse().unwrap();
        assert!(limits.check(ann, home).is_ok());
        assert!(limits.check(ann, away).is_ok(), "another socket, same user");
        let wait = limits.check(ann, home).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        // Bo has his own allowance, but shares the address's.
        assert!(limits.check(bo, home).is_ok());
        assert!(
            limits.check(bo, home).is_err(),
            "the address's burst is spent"
        );
        assert!(
            limits.check(Uuid::new_v4(), away).is_ok(),
            "others elsewhere are not held up"
        );
    }
}
