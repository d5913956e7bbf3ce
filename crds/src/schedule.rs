//! Backup schedules: when the next run is due, and the longest wait between two runs.
//! Pure (the clock is a parameter), so that the appliance's scheduler and the plan
//! decide from the same function, and tests drive it with any `now`.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScheduleError {
    #[error("{schedule:?} is not a valid cron schedule: {reason}")]
    Cron { schedule: String, reason: String },
    #[error("{timezone:?} is not a timezone of the IANA database (for example \"Africa/Algiers\")")]
    Timezone { timezone: String },
    #[error("{schedule:?} never fires")]
    Never { schedule: String },
}

/// A five-field cron schedule read in a timezone.
#[derive(Clone, Debug)]
pub struct Schedule {
    cron: Cron,
    timezone: Tz,
    text: String,
}

/// What the scheduler does now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Run now: this tick (the latest one due; missed ticks collapse into one run).
    Run(DateTime<Utc>),
    /// Nothing before this time.
    Wait(DateTime<Utc>),
}

impl Schedule {
    pub fn new(schedule: &str, timezone: &str) -> Result<Self, ScheduleError> {
        let cron = schedule.parse::<Cron>().map_err(|e| ScheduleError::Cron {
            schedule: schedule.to_owned(),
            reason: e.to_string(),
        })?;
        let timezone = parse_timezone(timezone)?;
        Ok(Self {
            cron,
            timezone,
            text: schedule.to_owned(),
        })
    }

    /// The first tick strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Result<DateTime<Utc>, ScheduleError> {
        self.cron
            .find_next_occurrence(&after.with_timezone(&self.timezone), false)
            .map(|tick| tick.with_timezone(&Utc))
            .map_err(|_| ScheduleError::Never {
                schedule: self.text.clone(),
            })
    }

    /// The decision at `now`, given the last run (the time its backup was taken) or,
    /// when there was none, `since` (when the scheduler started watching the tenant:
    /// a new tenant waits for its first tick rather than being backed up at once).
    ///
    /// The next run is the first tick after the last run. When that is at or before
    /// `now` the backup is due; the tick reported is the latest one at or before
    /// `now`, so a box that was off for a week makes one backup, not seven.
    pub fn decide(
        &self,
        now: DateTime<Utc>,
        last_run: Option<DateTime<Utc>>,
        since: DateTime<Utc>,
    ) -> Result<Decision, ScheduleError> {
        let reference = last_run.unwrap_or(since);
        let next = self.next_after(reference)?;
        if next > now {
            return Ok(Decision::Wait(next));
        }
        let latest = self
            .cron
            .find_previous_occurrence(&now.with_timezone(&self.timezone), true)
            .map(|tick| tick.with_timezone(&Utc))
            .unwrap_or(next);
        Ok(Decision::Run(latest.max(next)))
    }

    /// The longest wait between two consecutive ticks, over the two years from
    /// 2025-01-01 in the schedule's timezone (at most 2000 ticks are looked at: a
    /// schedule that fires that often has its longest gap within them).
    pub fn longest_interval(&self) -> Result<Duration, ScheduleError> {
        let start = self
            .timezone
            .with_ymd_and_hms(2025, 1, 1, 0, 0, 0)
            .single()
            .expect("midnight on 2025-01-01 exists in every timezone")
            .with_timezone(&Utc);
        let horizon = start + chrono::Duration::days(2 * 366);
        let mut previous = self.next_after(start)?;
        let mut longest = chrono::Duration::zero();
        for _ in 0..2000 {
            let next = self.next_after(previous)?;
            longest = longest.max(next - previous);
            previous = next;
            if previous > horizon {
                break;
            }
        }
        longest.to_std().map_err(|_| ScheduleError::Never {
            schedule: self.text.clone(),
        })
    }
}

pub fn parse_timezone(timezone: &str) -> Result<Tz, ScheduleError> {
    timezone.parse::<Tz>().map_err(|_| ScheduleError::Timezone {
        timezone: timezone.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn a_new_tenant_waits_for_its_first_tick_then_runs_once_per_tick() {
        // 02:30 in Algiers (UTC+1, no daylight saving) is 01:30 UTC.
        let daily = Schedule::new("30 2 * * *", "Africa/Algiers").unwrap();
        let since = at("2026-03-10T12:00:00Z");
        assert_eq!(
            daily
                .decide(at("2026-03-11T01:29:59Z"), None, since)
                .unwrap(),
            Decision::Wait(at("2026-03-11T01:30:00Z"))
        );
        assert_eq!(
            daily
                .decide(at("2026-03-11T01:30:00Z"), None, since)
                .unwrap(),
            Decision::Run(at("2026-03-11T01:30:00Z"))
        );
        // Ran at 01:30:04: the next is tomorrow's tick, whatever `since` says.
        let ran = at("2026-03-11T01:30:04Z");
        assert_eq!(
            daily
                .decide(at("2026-03-11T01:31:00Z"), Some(ran), since)
                .unwrap(),
            Decision::Wait(at("2026-03-12T01:30:00Z"))
        );
    }

    #[test]
    fn missed_ticks_collapse_into_one_run_at_the_latest_tick() {
        let hourly = Schedule::new("0 * * * *", "UTC").unwrap();
        let last = at("2026-03-10T08:00:05Z");
        // Off from 08:30 to 13:20: five ticks missed, one run, for the 13:00 tick.
        assert_eq!(
            hourly
                .decide(at("2026-03-10T13:20:00Z"), Some(last), last)
                .unwrap(),
            Decision::Run(at("2026-03-10T13:00:00Z"))
        );
    }

    #[test]
    fn the_timezone_moves_the_tick() {
        let paris = Schedule::new("0 3 * * *", "Europe/Paris").unwrap();
        let utc = Schedule::new("0 3 * * *", "UTC").unwrap();
        let since = at("2026-07-01T00:00:00Z");
        // Summer: Paris is UTC+2.
        assert_eq!(paris.next_after(since).unwrap(), at("2026-07-01T01:00:00Z"));
        assert_eq!(utc.next_after(since).unwrap(), at("2026-07-01T03:00:00Z"));
    }

    #[test]
    fn the_longest_interval_is_the_longest_gap_between_ticks() {
        let cases = [
            ("* * * * *", 60),
            ("*/15 * * * *", 15 * 60),
            ("30 2 * * *", 86_400),
            // Mondays and Thursdays: the gap from Thursday to Monday is four days.
            ("0 1 * * 1,4", 4 * 86_400),
            ("0 0 1 * *", 31 * 86_400),
        ];
        for (schedule, seconds) in cases {
            let interval = Schedule::new(schedule, "Africa/Algiers")
                .unwrap()
                .longest_interval()
                .unwrap();
            assert_eq!(interval.as_secs(), seconds, "{schedule}");
        }
    }

    #[test]
    fn bad_input_is_named() {
        let error = Schedule::new("61 * * * *", "UTC").unwrap_err();
        assert!(error.to_string().contains("61 * * * *"), "{error}");
        let error = Schedule::new("* * * * *", "Mars/Olympus").unwrap_err();
        assert!(error.to_string().contains("Mars/Olympus"), "{error}");
    }
}
