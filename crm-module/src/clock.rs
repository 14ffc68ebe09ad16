//! The clock every piece of engine logic reads time from.
//!
//! The host picks it when opening the module: the system clock for
//! production, or a manual clock that only moves when the host advances it,
//! so that 90 simulated days run in milliseconds.

use std::sync::atomic::{AtomicI64, Ordering};

/// Milliseconds since the Unix epoch, UTC. The module's one time type.
pub type Millis = i64;

/// One minute in [`Millis`].
pub const MINUTE: Millis = 60_000;
/// One hour in [`Millis`].
pub const HOUR: Millis = 60 * MINUTE;
/// One day in [`Millis`].
pub const DAY: Millis = 24 * HOUR;

/// The source of "now".
#[derive(Debug)]
pub enum Clock {
    /// Wall-clock time.
    System,
    /// Time that moves only when [`Clock::advance_to`] is called.
    Manual(AtomicI64),
}

impl Clock {
    /// A manual clock starting at `start`.
    pub fn manual(start: Millis) -> Self {
        Clock::Manual(AtomicI64::new(start))
    }

    /// The current instant.
    pub fn now(&self) -> Millis {
        match self {
            Clock::System => system_now(),
            Clock::Manual(t) => t.load(Ordering::SeqCst),
        }
    }

    /// True for a manual clock.
    pub fn is_manual(&self) -> bool {
        matches!(self, Clock::Manual(_))
    }

    /// Moves a manual clock forward to `t` (never backwards). No effect on the system clock.
    pub fn advance_to(&self, t: Millis) {
        if let Clock::Manual(cur) = self {
            cur.fetch_max(t, Ordering::SeqCst);
        }
    }
}

/// Wall-clock now in [`Millis`].
pub fn system_now() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

/// Formats an instant as RFC 3339 UTC with millisecond precision.
pub fn to_rfc3339(t: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(t)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| t.to_string())
}

/// Parses an RFC 3339 timestamp into [`Millis`].
pub fn parse_rfc3339(s: &str) -> Result<Millis, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|d| d.timestamp_millis())
        .map_err(|_| "must be an RFC 3339 timestamp such as 2026-01-05T09:00:00Z".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_only_moves_forward() {
        let c = Clock::manual(1_000);
        assert_eq!(c.now(), 1_000);
        c.advance_to(5_000);
        assert_eq!(c.now(), 5_000);
        c.advance_to(2_000);
        assert_eq!(c.now(), 5_000);
        assert!(c.is_manual());
    }

    #[test]
    fn rfc3339_round_trip() {
        let t = parse_rfc3339("2026-03-08T07:00:00Z").unwrap();
        assert_eq!(to_rfc3339(t), "2026-03-08T07:00:00.000Z");
        assert!(parse_rfc3339("yesterday").is_err());
    }
}
