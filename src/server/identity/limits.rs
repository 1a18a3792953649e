//! Sign-in attempts: at most [`ATTEMPTS`] per [`WINDOW`] for each name and for each client address, so
//! neither guessing one member's password nor trying many names from one place gets far.

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

/// Attempts allowed in a burst...
pub const ATTEMPTS: u32 = 10;
/// ...and the window they refill over.
pub const WINDOW: Duration = Duration::from_secs(5 * 60);

pub struct SignInLimits {
    by_name: DefaultKeyedRateLimiter<String>,
    by_address: DefaultKeyedRateLimiter<IpAddr>,
}

impl Default for SignInLimits {
    fn default() -> Self {
        Self::new(ATTEMPTS, WINDOW)
    }
}

impl SignInLimits {
    pub fn new(attempts: u32, window: Duration) -> Self {
        let attempts = NonZeroU32::new(attempts.max(1)).expect("at least one");
        let quota = Quota::with_period(window / attempts.get())
            .expect("a window above zero")
            .allow_burst(attempts);
        Self {
            by_name: RateLimiter::keyed(quota),
            by_address: RateLimiter::keyed(quota),
        }
    }

    /// Counts an attempt for `name_key` from `ip`; refused with how long to wait when either is spent.
    /// Every attempt counts, right or wrong: a limit on failures only would tell a guesser when they
    /// were right.
    pub fn attempt(&self, name_key: &str, ip: IpAddr) -> Result<(), Duration> {
        let now = DefaultClock::default().now();
        let wait = |denied: governor::NotUntil<_>| denied.wait_time_from(now);
        self.by_address.check_key(&ip).map_err(wait)?;
        self.by_name.check_key(&name_key.to_owned()).map_err(wait)?;
        Ok(())
    }

    /// Drops state of keys whose limits have refilled, so memory does not grow with every name tried.
    pub fn forget_idle(&self) {
        self.by_name.retain_recent();
        self.by_address.retain_recent();
    }
}

/// "Try again in 4 minutes." for a wait, rounded up.
pub fn try_again_in(wait: Duration) -> String {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    match secs {
        0..=1 => "Try again in a second.".to_owned(),
        2..=59 => format!("Try again in {secs} seconds."),
        60..=119 => "Try again in a minute.".to_owned(),
        _ => format!("Try again in {} minutes.", secs.div_ceil(60)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eleventh_attempt_waits_and_other_names_and_places_are_not_held_up() {
        let limits = SignInLimits::default();
        let home: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..ATTEMPTS {
            assert!(limits.attempt("ann", home).is_ok());
        }
        let wait = limits.attempt("ann", home).unwrap_err();
        assert!(wait > Duration::from_secs(20) && wait <= WINDOW, "{wait:?}");
        // The address is spent too, so another name from it also waits...
        assert!(limits.attempt("bo", home).is_err());
        // ...but the same name from elsewhere counts against the name.
        let away: IpAddr = "198.51.100.7".parse().unwrap();
        assert!(limits.attempt("ann", away).is_err());
        assert!(limits.attempt("cy", away).is_ok());
    }

    #[test]
    fn waits_read_as_people_say_them() {
        assert_eq!(
            try_again_in(Duration::from_millis(300)),
            "Try again in a second."
        );
        assert_eq!(
            try_again_in(Duration::from_secs(30)),
            "Try again in 30 seconds."
        );
        assert_eq!(
            try_again_in(Duration::from_secs(61)),
            "Try again in a minute."
        );
        assert_eq!(
            try_again_in(Duration::from_secs(241)),
            "Try again in 5 minutes."
        );
    }
}
