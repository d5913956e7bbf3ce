//! Failed operator-token attempts on `/internal/*`, counted per client address (in this
//! process; the internal listener is reached by the operator, the appliance and
//! monitoring only, never through a gateway, so the peer is the client).
//!
//! Each wrong or missing token spends one cell of a per-address budget (governor's GCRA,
//! `IAF_OPERATOR_TOKEN_FAILURES_PER_MINUTE`). The attempt that finds the budget spent
//! blocks the address until a cell comes back: until then every attempt from it is
//! answered 429 before the token is even compared, a correct one included, so guessing
//! faster than the budget learns nothing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

/// Past this many tracked addresses, forgotten ones are dropped on the next failure.
const PRUNE_ABOVE: usize = 4096;

pub struct OperatorGuard {
    failures: DefaultKeyedRateLimiter<IpAddr>,
    blocked: Mutex<HashMap<IpAddr, Instant>>,
}

impl std::fmt::Debug for OperatorGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorGuard").finish_non_exhaustive()
    }
}

impl OperatorGuard {
    /// `per_minute` failures per address (0 is taken as 1).
    pub fn new(per_minute: u32) -> Self {
        let per_minute = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        Self {
            failures: DefaultKeyedRateLimiter::keyed(Quota::per_minute(per_minute)),
            blocked: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(wait)` while `client` is blocked: answer 429 without looking at its token.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match blocked.get(&client) {
            Some(until) if *until > now => Err(*until - now),
            Some(_) => {
                blocked.remove(&client);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Counts a failed attempt from `client`: `Err(wait)` when the budget was already
    /// spent, and the address is then blocked for `wait`.
    pub fn failed(&self, client: IpAddr) -> Result<(), Duration> {
        if self.failures.len() > PRUNE_ABOVE {
            self.failures.retain_recent();
        }
        match self.failures.check_key(&client) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until
                    .wait_time_from(DefaultClock::default().now())
                    .max(Duration::from_secs(1));
                let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                if blocked.len() > PRUNE_ABOVE {
                    blocked.retain(|_, until| *until > now);
                }
                blocked.insert(client, now + wait);
                Err(wait)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_per_address_and_blocks_once_spent() {
        let guard = OperatorGuard::new(3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(guard.check(a).is_ok());
            assert!(guard.failed(a).is_ok());
        }
        let wait = guard.failed(a).unwrap_err();
        assert!(
            wait >= Duration::from_secs(1) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(
            guard.check(a).is_err(),
            "a blocked address is refused up front"
        );
        assert!(guard.check(b).is_ok(), "another address is not");
        assert!(guard.failed(b).is_ok());
    }
}
