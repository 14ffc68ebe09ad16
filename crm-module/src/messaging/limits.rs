//! Sending limits per channel (SPEC §6): at most N messages handed over per
//! rolling hour and per rolling day. Excess never drops: it stays in the
//! outbox, in order, and goes out when the window frees a slot. The count
//! comes from the outbox itself, so limits hold across a restart. Answers
//! to STOP and HELP and staff's test sends are outside the limits
//! (`outbox.exempt`): they go when the channel is over its limit, and do
//! not count.

use std::collections::HashMap;

use rusqlite::params;

use crate::clock::{DAY, HOUR, Millis};
use crate::error::Result;
use crate::settings::SendingLimits;

/// The channels that have limits set, with how many more messages may go now.
pub fn remaining(
    conn: &rusqlite::Connection,
    limits: &SendingLimits,
    now: Millis,
    in_flight: &HashMap<String, i64>,
) -> Result<HashMap<&'static str, i64>> {
    let mut out = HashMap::new();
    for (channel, per_hour, per_day) in by_channel(limits) {
        if per_hour.is_none() && per_day.is_none() {
            continue;
        }
        let flying = in_flight.get(channel).copied().unwrap_or(0);
        let mut left = i64::MAX;
        for (limit, window) in [(per_hour, HOUR), (per_day, DAY)] {
            let Some(limit) = limit else { continue };
            left =
                left.min(limit as i64 - handed_over_since(conn, channel, now - window)? - flying);
        }
        out.insert(channel, left.max(0));
    }
    Ok(out)
}

/// Each channel with its limits per hour and per day.
fn by_channel(limits: &SendingLimits) -> [(&'static str, Option<u32>, Option<u32>); 2] {
    [
        ("email", limits.email_per_hour, limits.email_per_day),
        ("sms", limits.sms_per_hour, limits.sms_per_day),
    ]
}

/// The next instant after `now` at which one of the `blocked` channels gets
/// a free slot: the oldest message handed over within one of its limited
/// windows leaves that window. (The channel may still be over its other
/// limit then; asked again at that instant, this gives the next.)
pub fn next_slot(
    conn: &rusqlite::Connection,
    limits: &SendingLimits,
    blocked: &[&str],
    now: Millis,
) -> Result<Option<Millis>> {
    let mut next: Option<Millis> = None;
    let mut stmt = conn.prepare_cached(OLDEST_SINCE_SQL)?;
    for (channel, per_hour, per_day) in by_channel(limits) {
        if !blocked.contains(&channel) {
            continue;
        }
        for (limit, window) in [(per_hour, HOUR), (per_day, DAY)] {
            if limit.is_none() {
                continue;
            }
            let oldest: Option<Millis> =
                stmt.query_row(params![channel, now - window], |r| r.get(0))?;
            // Counted while `handed_over_at > now - window`: it leaves at
            // `oldest + window`.
            next = next.into_iter().chain(oldest.map(|t| t + window)).min();
        }
    }
    Ok(next)
}

/// How many messages within the limits of a channel (`?1`) were handed
/// over after `?2`: a range of `outbox_handed_over`.
pub(crate) const HANDED_OVER_SINCE_SQL: &str = "SELECT COUNT(*) FROM outbox
    WHERE kind = 'message' AND handed_over_at IS NOT NULL AND exempt = 0 AND channel = ?1
      AND handed_over_at > ?2";

/// When the oldest of them was: [`HANDED_OVER_SINCE_SQL`]'s `MIN`.
pub(crate) const OLDEST_SINCE_SQL: &str = "SELECT MIN(handed_over_at) FROM outbox
    WHERE kind = 'message' AND handed_over_at IS NOT NULL AND exempt = 0 AND channel = ?1
      AND handed_over_at > ?2";

/// Messages of a channel handed to the sender after `since`.
fn handed_over_since(conn: &rusqlite::Connection, channel: &str, since: Millis) -> Result<i64> {
    Ok(conn
        .prepare_cached(HANDED_OVER_SINCE_SQL)?
        .query_row(params![channel, since], |r| r.get(0))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{self, EffectKind, HostAnswer};
    use crate::store::{self, Access};

    /// A message counts in the windows of its hand-over, not of a later
    /// change to its row (a delivery receipt, a withdrawal).
    #[test]
    fn a_message_counts_from_its_hand_over_not_from_a_later_change() {
        let dir = tempfile::tempdir().unwrap();
        let conn = store::open(&dir.path().join("l.db"), Access::Write).unwrap();
        let now = 10 * DAY;
        let sent = |key: &str, at: Millis| {
            let effect = outbox::sample(key, EffectKind::Message, Some("email"), "c1", at);
            outbox::write(&conn, &[effect], at).unwrap();
            let id: i64 = conn
                .query_row(
                    "SELECT id FROM outbox WHERE idempotency_key = ?1",
                    [key],
                    |r| r.get(0),
                )
                .unwrap();
            outbox::record_answer(&conn, id, HostAnswer::Accepted, None, at).unwrap();
            id
        };
        let old = sent("old", now - 2 * DAY);
        sent("recent", now - 10 * crate::clock::MINUTE);
        // The old one's delivery receipt comes in now.
        conn.execute(
            "UPDATE outbox SET status = 'failed', updated_at = ?2 WHERE id = ?1",
            rusqlite::params![old, now],
        )
        .unwrap();
        let limits = SendingLimits {
            email_per_hour: Some(5),
            email_per_day: Some(10),
            ..SendingLimits::default()
        };
        let left = remaining(&conn, &limits, now, &HashMap::new()).unwrap();
        assert_eq!(left["email"], 4, "only the recent one counts");
        assert_eq!(
            next_slot(&conn, &limits, &["email"], now).unwrap(),
            Some(now - 10 * crate::clock::MINUTE + HOUR)
        );
    }
}
