//! When to renew: a pure decision over the stored certificate's expiry and the clock.

use std::time::{Duration, SystemTime};

/// What to do about one host's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewalDecision {
    /// Nothing is stored for the host: obtain a certificate.
    Obtain,
    /// Still valid for longer than the renewal window: check again at `renew_at`.
    Keep { renew_at: SystemTime },
    /// `remaining` is inside the renewal window (zero when already expired): renew now.
    Renew { remaining: Duration },
}

/// Renew when `renew_before` or less remains before `not_after`.
pub fn renewal_decision(
    not_after: Option<SystemTime>,
    now: SystemTime,
    renew_before: Duration,
) -> RenewalDecision {
    let Some(not_after) = not_after else {
        return RenewalDecision::Obtain;
    };
    let remaining = not_after.duration_since(now).unwrap_or(Duration::ZERO);
    if remaining <= renew_before {
        RenewalDecision::Renew { remaining }
    } else {
        RenewalDecision::Keep {
            renew_at: not_after - renew_before,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn renews_at_thirty_days_or_less() {
        let now = SystemTime::UNIX_EPOCH + 1000 * DAY;
        let window = 30 * DAY;
        assert_eq!(renewal_decision(None, now, window), RenewalDecision::Obtain);
        assert_eq!(
            renewal_decision(Some(now + 31 * DAY), now, window),
            RenewalDecision::Keep {
                renew_at: now + DAY
            }
        );
        assert_eq!(
            renewal_decision(Some(now + 30 * DAY), now, window),
            RenewalDecision::Renew {
                remaining: 30 * DAY
            }
        );
        assert_eq!(
            renewal_decision(Some(now + 29 * DAY), now, window),
            RenewalDecision::Renew {
                remaining: 29 * DAY
            }
        );
        assert_eq!(
            renewal_decision(Some(now - DAY), now, window),
            RenewalDecision::Renew {
                remaining: Duration::ZERO
            }
        );
        // One second more than the window is still kept.
        assert!(matches!(
            renewal_decision(Some(now + window + Duration::from_secs(1)), now, window),
            RenewalDecision::Keep { .. }
        ));
    }
}
