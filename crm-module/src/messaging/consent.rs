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

/// Decides whether a message may go out; returns the address to use.
pub fn check(
    contact: &Contact,
    channel: &str,
    category: Category,
    bypass_preferences: bool,
) -> Result<String, Suppression> {
    let field = if channel == "sms" { "phone" } else { "email" };
    let Some(address) = contact.text(field) else {
        return Err(Suppression::NoAddress);
    };
    if channel == "email"
        && contact
            .props
            .get(EMAIL_UNDELIVERABLE)
            .and_then(serde_json::Value::as_str)
            .is_some_and(|bounced| bounced.eq_ignore_ascii_case(address))
    {
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
