//! Consent: may this message reach this contact on this channel?
//!
//! Rules (SPEC §9 decision, issue 3 §5):
//! - Marketing reaches only a channel that is explicitly `subscribed`:
//!   `unknown` consent and `unsubscribed` are suppressed.
//! - Care messages (appointment and treatment notices) reach a `subscribed`
//!   channel; an `unknown` one only when the step bypasses preferences.
//!   The bypass never overrides an unsubscribe or a STOP.
//! - An address that hard-bounced is undeliverable for every category.
//! - A number that said STOP receives nothing but the single confirmation
//!   (sent by the keyword handler, not through this check).
//!
//! A message that may not be sent is recorded as suppressed with the reason;
//! it is never dropped silently.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::core::contacts::Contact;

/// Why a message is sent: marketing, or care (appointment and treatment notices).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Promotions, newsletters, nurture and win-back flows.
    #[default]
    Marketing,
    /// Appointment and treatment notices.
    Care,
}

impl Category {
    /// Stable id.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Marketing => "marketing",
            Category::Care => "care",
        }
    }

    /// The category with this stable id.
    pub fn parse(id: &str) -> Option<Category> {
        match id {
            "marketing" => Some(Category::Marketing),
            "care" => Some(Category::Care),
            _ => None,
        }
    }
}

/// Why a message was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Suppression {
    /// The contact has no address on the channel.
    NoAddress,
    /// The channel is unsubscribed (or the number said STOP).
    Unsubscribed,
    /// Marketing (or care without bypass) to a channel with no recorded consent.
    UnknownConsent,
    /// The address hard-bounced.
    Undeliverable,
}

impl Suppression {
    /// Stable id, as logged.
    pub fn as_str(self) -> &'static str {
        match self {
            Suppression::NoAddress => "no_address",
            Suppression::Unsubscribed => "unsubscribed",
            Suppression::UnknownConsent => "unknown_consent",
            Suppression::Undeliverable => "undeliverable",
        }
    }
}

/// The property marking an email address that hard-bounced.
pub const EMAIL_UNDELIVERABLE: &str = "email_undeliverable";

/// The property marking a mobile number that hard-bounced (a landline, a
/// number out of service).
pub const SMS_UNDELIVERABLE: &str = "sms_undeliverable";

/// The property marking the contact's address on `channel` (`email`,
/// `sms`) undeliverable.
pub fn undeliverable_property(channel: &str) -> &'static str {
    if channel == "sms" {
        SMS_UNDELIVERABLE
    } else {
        EMAIL_UNDELIVERABLE
    }
}

/// Whether the contact's current address on `channel` is one that
/// hard-bounced.
pub fn undeliverable(contact: &Contact, channel: &str) -> bool {
    contact
        .text(address_field(channel))
        .is_some_and(|a| hard_bounced(contact, channel, a))
}

/// The contact property holding the address of `channel` (`email`, `sms`).
pub fn address_field(channel: &str) -> &'static str {
    if channel == "sms" { "phone" } else { "email" }
}

/// Whether `address` is the one of this contact's on `channel` that
/// hard-bounced: the same email address whatever its case, the same
/// number's digits however written.
fn hard_bounced(contact: &Contact, channel: &str, address: &str) -> bool {
    contact
        .props
        .get(undeliverable_property(channel))
        .and_then(serde_json::Value::as_str)
        .is_some_and(|bounced| same_address(channel, bounced, address))
}

/// Whether `a` and `b` are one address on `channel`: the same email
/// address whatever its case, the same number's digits (its last ten)
/// however written.
pub fn same_address(channel: &str, a: &str, b: &str) -> bool {
    if channel == "sms" {
        let key = crate::core::contacts::phone_key;
        key(a).is_some_and(|k| key(b) == Some(k))
    } else {
        a.eq_ignore_ascii_case(b)
    }
}

/// Decides whether a message may go out; returns the address to use.
pub fn check(
    contact: &Contact,
    channel: &str,
    category: Category,
    bypass_preferences: bool,
) -> Result<String, Suppression> {
    let Some(address) = contact.text(address_field(channel)) else {
        return Err(Suppression::NoAddress);
    };
    if hard_bounced(contact, channel, address) {
        return Err(Suppression::Undeliverable);
    }
    match (contact.subscription(channel), category) {
        ("subscribed", _) => Ok(address.to_string()),
        ("unsubscribed", _) => Err(Suppression::Unsubscribed),
        (_, Category::Care) if bypass_preferences => Ok(address.to_string()),
        _ => Err(Suppression::UnknownConsent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn contact(props: Value) -> Contact {
        let Value::Object(props) = props else {
            unreachable!()
        };
        Contact::with_props("c1", props)
    }

    #[test]
    fn marketing_needs_explicit_consent() {
        let c = contact(json!({"email": "a@b.co", "email_subscription": "subscribed"}));
        assert_eq!(
            check(&c, "email", Category::Marketing, false),
            Ok("a@b.co".into())
        );
        let c = contact(json!({"email": "a@b.co"}));
        assert_eq!(
            check(&c, "email", Category::Marketing, false),
            Err(Suppression::UnknownConsent)
        );
        // The bypass is for care only.
        assert_eq!(
            check(&c, "email", Category::Marketing, true),
            Err(Suppression::UnknownConsent)
        );
    }

    #[test]
    fn bypass_never_overrides_an_unsubscribe() {
        let c = contact(json!({"phone": "+16175550123", "sms_subscription": "unsubscribed"}));
        assert_eq!(
            check(&c, "sms", Category::Care, true),
            Err(Suppression::Unsubscribed)
        );
        let c = contact(json!({"phone": "+16175550123"}));
        assert_eq!(
            check(&c, "sms", Category::Care, false),
            Err(Suppression::UnknownConsent)
        );
        assert_eq!(
            check(&c, "sms", Category::Care, true),
            Ok("+16175550123".into())
        );
    }

    #[test]
    fn hard_bounced_address_is_undeliverable_until_it_changes() {
        let c = contact(
            json!({"email": "a@b.co", "email_subscription": "subscribed", "email_undeliverable": "a@b.co"}),
        );
        assert_eq!(
            check(&c, "email", Category::Care, true),
            Err(Suppression::Undeliverable)
        );
        let c = contact(
            json!({"email": "new@b.co", "email_subscription": "subscribed", "email_undeliverable": "a@b.co"}),
        );
        assert!(check(&c, "email", Category::Marketing, false).is_ok());
        assert_eq!(
            check(&contact(json!({})), "email", Category::Care, true),
            Err(Suppression::NoAddress)
        );
    }
}

/// What becomes of a queued message at the moment it is handed over to its
/// sender. Consent was checked when the message was queued, but it can be
/// withdrawn before the message leaves (it waited for a sending limit, a
/// retry, the host to come back): the hand-over decides again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandOver {
    /// Send it now.
    Go,
    /// Never send it: consent was withdrawn or the address hard-bounced.
    Suppress(Suppression),
    /// An SMS outside the recipient's sending hours: hand it over when they
    /// open, at this instant.
    WaitUntil(crate::clock::Millis),
}

/// Decides the hand-over of a (non-compliance) message on `channel` to
/// `contact` at `now`: it goes only if the channel is not unsubscribed, the
/// address has not hard-bounced, and, for an SMS, the recipient's
/// sending hours are open. (A STOP confirmation or a HELP answer goes at
/// once, whatever the hour, without asking: see [`super::handover`].)
pub fn at_hand_over(
    contact: &Contact,
    channel: &str,
    settings: &crate::settings::Resolved,
    now: crate::clock::Millis,
) -> HandOver {
    if contact.subscription(channel) == "unsubscribed" {
        return HandOver::Suppress(Suppression::Unsubscribed);
    }
    if undeliverable(contact, channel) {
        return HandOver::Suppress(Suppression::Undeliverable);
    }
    if channel == "sms" {
        let open = sending_hours_open_at(contact, settings, now);
        if open > now {
            return HandOver::WaitUntil(open);
        }
    }
    HandOver::Go
}

/// The recipient's SMS sending hours (settings `sms.send_from` to
/// `sms.send_until`, every day) in their own time zone, or the practice's.
pub fn sending_hours(
    contact: &Contact,
    settings: &crate::settings::Resolved,
) -> (crate::schedule::RunWindow, chrono_tz::Tz) {
    use crate::schedule::{DayHours, RunWindow, Weekday};
    let sms = &settings.doc.sms;
    let tz = contact
        .text("time_zone")
        .and_then(|z| z.parse::<chrono_tz::Tz>().ok())
        .unwrap_or(settings.tz);
    let hours = RunWindow::SpecificHours {
        days: Weekday::ALL
            .iter()
            .map(|d| DayHours {
                day: *d,
                enabled: true,
                start: sms.send_from,
                end: sms.send_until,
            })
            .collect(),
    };
    (hours, tz)
}

/// The first instant at or after `now` inside the recipient's sending hours.
pub fn sending_hours_open_at(
    contact: &Contact,
    settings: &crate::settings::Resolved,
    now: crate::clock::Millis,
) -> crate::clock::Millis {
    let (hours, tz) = sending_hours(contact, settings);
    hours.next_open(now, tz).unwrap_or(now)
}
