//! The clock every piece of engine logic reads time from.
//!
//! The host picks it when opening the module: the system clock for
//! production, or a manual clock that only moves when the host advances it,
//! so that 90 simulated days run in milliseconds.
//!
//! Neither goes back, within an open or across opens: the module opens its
//! clock no earlier than the last instant its database recorded
//! ([`Clock::not_before`]), and the system clock reads the wall clock's
//! time or the latest it read before, whichever is later. A wall clock
//! stepped back (an NTP correction, a machine's clock reset) holds the
//! module's time until it catches up; otherwise every update pushed in the
//! gap would read as older than the record (stale), and every wake-up,
//! retry and date evaluation recorded before would wait for the old time to
//! come round again.

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
    /// Wall-clock time, never earlier than the latest instant read (or set
    /// by [`Clock::not_before`]), which it holds.
    System(AtomicI64),
    /// Time that moves only when [`Clock::advance_to`] is called.
    Manual(AtomicI64),
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Clock::System(AtomicI64::new(Millis::MIN))
    }

    /// A manual clock starting at `start`.
    pub fn manual(start: Millis) -> Self {
        Clock::Manual(AtomicI64::new(start))
    }

    /// The current instant.
    pub fn now(&self) -> Millis {
        match self {
            Clock::System(latest) => {
                let wall = system_now();
                latest.fetch_max(wall, Ordering::SeqCst).max(wall)
            }
            Clock::Manual(t) => t.load(Ordering::SeqCst),
        }
    }

    /// From now on, never earlier than `t` (at open: the last instant the
    /// database recorded). A manual clock started before it starts at it.
    pub fn not_before(&self, t: Millis) {
        match self {
            Clock::System(latest) | Clock::Manual(latest) => {
                latest.fetch_max(t, Ordering::SeqCst);
            }
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

    /// A wall clock stepped back does not take the module's time with it:
    /// it holds at the latest instant until the wall clock passes it.
    #[test]
    fn the_system_clock_never_goes_back() {
        let c = Clock::system();
        let before = c.now();
        assert!((before - system_now()).abs() < 60_000);
        // As if the database recorded an instant an hour ahead of the wall clock.
        c.not_before(before + HOUR);
        assert_eq!(c.now(), before + HOUR);
        assert_eq!(c.now(), before + HOUR);
        // An earlier floor changes nothing.
        c.not_before(before);
        assert_eq!(c.now(), before + HOUR);
        assert!(!c.is_manual());
        // A manual clock started before the floor starts at it.
        let m = Clock::manual(1_000);
        m.not_before(9_000);
        assert_eq!(m.now(), 9_000);
        m.not_before(5_000);
        assert_eq!(m.now(), 9_000);
    }

    #[test]
    fn rfc3339_round_trip() {
        let t = parse_rfc3339("2026-03-08T07:00:00Z").unwrap();
        assert_eq!(to_rfc3339(t), "2026-03-08T07:00:00.000Z");
        assert!(parse_rfc3339("yesterday").is_err());
    }
}
