//! Scrubbing patient data out of what a plugin says.
//!
//! The rule is "no patient data in logs, URLs or error messages: ids only",
//! and plugin authors are told to log ids only. A plugin is vendor code,
//! though, and it is handed patient data: a step plugin the whole contact, a
//! sender adapter the recipient, subject and text. So before a plugin's log
//! line, its stderr or a reason it gave (a step's `failed`, a sender's
//! `retry-later` / `failed`) leaves the plugin host, every occurrence of a
//! patient value the module passed into *that call* is replaced with
//! [`MARKER`]:
//!
//! - **a step call** ([`Redactor::contact`]): every string in the contact JSON,
//!   at any depth (tags, staff names, custom properties), except the
//!   contact's top-level `id`, which is an id and stays; the first and last
//!   name also as whole words from [`MIN_NAME_CHARS`] characters; numbers of
//!   [`MIN_NUMBER_DIGITS`] digits or more, as text (a record or member number
//!   stored as a number); smaller numbers (counts, amounts) stay;
//! - **a send** ([`Redactor::message`]): the recipient `to`, the subject, the
//!   text and the HTML part, each as a whole string; an SMS recipient's
//!   number in its national form too (a provider's error quoting
//!   `(617) 555-0142`); the contact's first and last name
//!   ([`Outgoing::patient`]: a log line greeting the patient), as whole
//!   words only, from [`MIN_NAME_CHARS`] characters.
//!
//! Each value is matched as given (trimmed), ignoring ASCII case, and also
//! as a JSON string would show it (a plugin logging what it serialized) and,
//! for a phone number, as its digits alone. Other values shorter than
//! [`MIN_CHARS`] characters are left alone: they would shred ordinary words.
//! Matching is one pass, leftmost-longest (`ann@example.com` becomes one
//! marker, not a marker for `Ann` inside it), in time linear in the text.
//!
//! It is a safety net, not a licence: it knows only what the module passed
//! in. Data a plugin fetched itself, or a value it transformed (reformatted a
//! date, kept part of a name), gets through. During install (`describe`)
//! there is no patient data, so nothing is scrubbed.
//!
//! The patterns are built on first use: a call that logs nothing and
//! succeeds pays only for keeping the input.

use std::borrow::Cow;
use std::sync::OnceLock;

use aho_corasick::{AhoCorasick, MatchKind};
use serde_json::Value;

use super::Outgoing;

/// What replaces a patient value.
pub const MARKER: &str = "[redacted]";
/// Values shorter than this many characters are not scrubbed (`Al`, `MA`,
/// `no` would shred ordinary words).
pub const MIN_CHARS: usize = 3;
/// A name given with a message (matched as a whole word only) is scrubbed
/// from this many characters (`Li`, `Ng`).
pub const MIN_NAME_CHARS: usize = 2;
/// A number in the contact is scrubbed when it has at least this many
/// digits: an identifier (a record number, a member number, a phone kept as
/// a number), not a count or an amount.
pub const MIN_NUMBER_DIGITS: usize = 6;
/// Digits a text needs to be taken for a phone number (whose digits alone
/// are scrubbed too).
const PHONE_DIGITS: usize = 7;

/// The patient values of one plugin call, and the matcher built from them.
pub struct Redactor {
    source: Source,
    /// The plugin's secrets: a provider's error that echoes the API key is
    /// scrubbed of it too.
    secrets: Vec<String>,
    matcher: OnceLock<Matcher>,
}

enum Source {
    /// Nothing to scrub (install).
    Nothing,
    /// The contact as passed to a step plugin, JSON text.
    Contact(String),
    /// A message: its parts as whole strings, names matched as whole
    /// words, and an SMS recipient's number (its other forms are worked out
    /// only when something is scrubbed).
    Message {
        values: Vec<String>,
        names: Vec<String>,
        sms_to: Option<String>,
    },
}

enum Matcher {
    /// No value long enough.
    Nothing,
    /// The values, leftmost-longest, ASCII case ignored; whether each
    /// pattern counts only as a whole word.
    Values(AhoCorasick, Vec<bool>),
    /// The matcher could not be built: every text is replaced whole (fail
    /// closed).
    Failed,
}

impl std::fmt::Debug for Redactor {
    // Never shows the values it holds.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor").finish_non_exhaustive()
    }
}

impl Redactor {
    /// Scrubs nothing: a call with no patient data (install's `describe`).
    pub fn none() -> Redactor {
        Redactor::with(Source::Nothing)
    }

    /// For a step call: `contact_json` is the contact exactly as the plugin
    /// received it (JSON text).
    pub fn contact(contact_json: String) -> Redactor {
        Redactor::with(Source::Contact(contact_json))
    }

    /// For a send: the recipient, subject, text and HTML part as whole
    /// strings; the contact's names ([`Outgoing::patient`]) as whole words
    /// (a patient called Tim leaves "timeout" alone), from
    /// [`MIN_NAME_CHARS`] characters; an SMS recipient's number also in its
    /// national form.
    pub fn message(m: &Outgoing) -> Redactor {
        let mut values = vec![m.to.clone(), m.text.clone()];
        values.extend(m.subject.iter().cloned());
        values.extend(m.html.iter().cloned());
        Redactor::with(Source::Message {
            values,
            names: m.patient.clone(),
            sms_to: (m.channel == "sms").then(|| m.to.clone()),
        })
    }

    fn with(source: Source) -> Redactor {
        Redactor {
            source,
            secrets: Vec::new(),
            matcher: OnceLock::new(),
        }
    }

    /// Also scrubs the plugin's `secrets` (their values), which the
    /// module's views and logs never show back.
    pub fn with_secrets(mut self, secrets: impl IntoIterator<Item = String>) -> Redactor {
        self.secrets.extend(secrets);
        self
    }

    /// The strings to look for (at least [`MIN_CHARS`] characters each, a
    /// name [`MIN_NAME_CHARS`]), each with whether it counts only as a
    /// whole word; a string that is both counts everywhere.
    fn patterns(&self) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        // The contact's names, as given (trimmed and bounded below).
        let mut names: Vec<String> = Vec::new();
        match &self.source {
            Source::Nothing => {}
            Source::Contact(json) => match serde_json::from_str::<Value>(json) {
                Ok(Value::Object(fields)) => {
                    for (name, value) in &fields {
                        if name != "id" {
                            contact_value(value, &mut out);
                        }
                    }
                    // The names also as whole words from MIN_NAME_CHARS, as
                    // in a send: `Li` and `Wu` are shorter than MIN_CHARS.
                    names.extend(
                        ["first_name", "last_name"]
                            .iter()
                            .filter_map(|f| fields.get(*f).and_then(Value::as_str))
                            .map(str::to_string),
                    );
                }
                // Not an object (the module always passes one): scrub every
                // value it holds.
                Ok(other) => contact_value(&other, &mut out),
                Err(_) => text(json, &mut out),
            },
            Source::Message {
                values,
                names: message_names,
                sms_to,
            } => {
                for v in values {
                    text(v, &mut out);
                }
                // `to` is E.164: its national form is read without a region.
                for form in sms_to
                    .iter()
                    .flat_map(|to| crate::messaging::sms::number_forms(to, "US"))
                {
                    text(&form, &mut out);
                }
                names.extend(message_names.iter().cloned());
            }
        }
        for secret in &self.secrets {
            text(secret, &mut out);
        }
        out.retain(|p| p.chars().count() >= MIN_CHARS);
        let mut all: Vec<(String, bool)> = (out.into_iter().map(|p| (p, false)))
            .chain(
                (names.iter().map(|n| n.trim()))
                    .filter(|n| n.chars().count() >= MIN_NAME_CHARS)
                    .map(|n| (n.to_string(), true)),
            )
            .collect();
        // (p, false) sorts first: a string that is both counts everywhere.
        all.sort_unstable();
        all.dedup_by(|b, a| a.0 == b.0);
        all
    }

    fn matcher(&self) -> &Matcher {
        self.matcher.get_or_init(|| {
            let (patterns, words): (Vec<String>, Vec<bool>) = self.patterns().into_iter().unzip();
            if patterns.is_empty() {
                return Matcher::Nothing;
            }
            AhoCorasick::builder()
                .ascii_case_insensitive(true)
                .match_kind(MatchKind::LeftmostLongest)
                .build(&patterns)
                .map_or(Matcher::Failed, |ac| Matcher::Values(ac, words))
        })
    }

    /// `text` with every patient value replaced by [`MARKER`]; borrowed when
    /// there was nothing to replace.
    pub fn redact<'t>(&self, text: &'t str) -> Cow<'t, str> {
        match self.matcher() {
            Matcher::Nothing => Cow::Borrowed(text),
            Matcher::Failed => Cow::Borrowed(MARKER),
            Matcher::Values(ac, words) => {
                if !ac.is_match(text) {
                    return Cow::Borrowed(text);
                }
                let mut out = String::with_capacity(text.len());
                ac.replace_all_with(text, &mut out, |m, found, dst| {
                    if words[m.pattern().as_usize()] && !whole_word(text, m.start(), m.end()) {
                        dst.push_str(found);
                    } else {
                        dst.push_str(MARKER);
                    }
                    true
                });
                Cow::Owned(out)
            }
        }
    }

    /// [`redact`](Redactor::redact) for an owned string: returned as is when
    /// there was nothing to replace.
    pub fn redact_string(&self, text: String) -> String {
        let changed = match self.redact(&text) {
            Cow::Borrowed(b) if b.len() == text.len() && b.as_ptr() == text.as_ptr() => None,
            other => Some(other.into_owned()),
        };
        changed.unwrap_or(text)
    }
}

/// Whether `text[start..end]` stands as a word: no letter or digit just
/// before or after it.
fn whole_word(text: &str, start: usize, end: usize) -> bool {
    let before = text[..start].chars().next_back();
    let after = text[end..].chars().next();
    !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
}

/// The patterns of one value of the contact.
fn contact_value(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => text(s, out),
        Value::Number(n) => {
            let t = n.to_string();
            if t.bytes().filter(u8::is_ascii_digit).count() >= MIN_NUMBER_DIGITS {
                out.push(t);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| contact_value(v, out)),
        Value::Object(fields) => fields.values().for_each(|v| contact_value(v, out)),
        Value::Null | Value::Bool(_) => {}
    }
}

/// The patterns of one text: itself (trimmed), as a JSON string shows it,
/// and a phone number's digits alone.
fn text(s: &str, out: &mut Vec<String>) {
    let t = s.trim();
    if t.is_empty() {
        return;
    }
    out.push(t.to_string());
    if let Ok(quoted) = serde_json::to_string(t) {
        let inner = &quoted[1..quoted.len() - 1];
        if inner != t {
            out.push(inner.to_string());
        }
    }
    let digits: String = t.chars().filter(char::is_ascii_digit).collect();
    let phone_like = t
        .chars()
        .all(|c| c.is_ascii_digit() || " +-().".contains(c));
    if phone_like && digits.len() >= PHONE_DIGITS && digits != t {
        out.push(digits);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn contact(v: Value) -> Redactor {
        Redactor::contact(v.to_string())
    }

    /// A step call's contact names of two letters are scrubbed as whole
    /// words, as a send's are (they were under MIN_CHARS, and logged as
    /// they came).
    #[test]
    fn a_step_calls_short_names_are_scrubbed_as_whole_words() {
        let r = contact(json!({"id": "c9", "first_name": "Al", "last_name": "Wu", "city": "MA"}));
        assert_eq!(
            r.redact("scored Al Wu: 42 (Wu's visits; always, wuxia)"),
            format!("scored {MARKER} {MARKER}: 42 ({MARKER}'s visits; always, wuxia)")
        );
    }

    #[test]
    fn the_plugins_secrets_are_scrubbed_too() {
        let r = Redactor::contact(r#"{"id": "c1", "first_name": "Ann"}"#.into())
            .with_secrets(["sk-live-9f8e7d6c5b4a".to_string()]);
        assert_eq!(
            r.redact("explore: auth refused for key SK-LIVE-9f8e7d6c5b4a (Ann)"),
            format!("explore: auth refused for key {MARKER} ({MARKER})")
        );
    }

    #[test]
    fn every_contact_string_is_scrubbed_but_the_id() {
        let r = contact(json!({
            "id": "c-1042", "first_name": "Annabel", "last_name": "Okafor",
            "email": "annabel.okafor@example.com", "dob": "1984-07-19",
            "owner": {"id": "u7", "name": "Sarah Chen"},
            "tags": ["diabetes-followup"], "custom": {"allergy": "penicillin"},
        }));
        let line = "contact c-1042: Annabel Okafor <annabel.okafor@example.com> born 1984-07-19, \
                    owner Sarah Chen, tag diabetes-followup, allergy penicillin";
        assert_eq!(
            r.redact(line),
            "contact c-1042: [redacted] [redacted] <[redacted]> born [redacted], \
             owner [redacted], tag [redacted], allergy [redacted]"
        );
    }

    #[test]
    fn the_longest_value_wins_and_case_is_ignored() {
        // "Ann" is inside the email: the email is one marker, not "[redacted]@…".
        let r = contact(json!({"id": "c1", "first_name": "Ann", "email": "ann@example.com"}));
        assert_eq!(
            r.redact("ANN wrote from Ann@Example.com"),
            "[redacted] wrote from [redacted]"
        );
    }

    #[test]
    fn short_values_and_small_numbers_stay_large_numbers_go() {
        let r = contact(json!({"id": "c1", "first_name": "Al", "state": "MA",
            "no_show_count": 2, "balance": 120.5, "member_number": 48_213_377}));
        // A short value stays (`MA`); a short name goes, as a whole word.
        assert_eq!(
            r.redact("Al in MA: 2 no-shows, balance 120.5, member 48213377"),
            "[redacted] in MA: 2 no-shows, balance 120.5, member [redacted]"
        );
    }

    #[test]
    fn json_escaped_and_phone_digit_forms_are_scrubbed() {
        let r = contact(json!({"id": "c1", "nickname": "Bo \"the Bear\"",
            "phone": "(617) 555-0142"}));
        assert_eq!(
            r.redact(r#"{"nickname":"Bo \"the Bear\""} dialing +16175550142 / (617) 555-0142"#),
            r#"{"nickname":"[redacted]"} dialing +1[redacted] / [redacted]"#
        );
    }

    #[test]
    fn the_marker_is_never_shredded_and_ids_stay() {
        // A value that occurs inside the marker itself does not re-match it.
        let r = contact(json!({"id": "p-77", "first_name": "Red", "tag": "act"}));
        assert_eq!(r.redact("Red act p-77"), "[redacted] [redacted] p-77");
        assert_eq!(r.redact("nothing here"), "nothing here");
        assert!(matches!(r.redact("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn non_ascii_values_are_scrubbed_whole() {
        let r = contact(json!({"id": "c1", "first_name": "Zoë", "city": "Göteborg"}));
        assert_eq!(
            r.redact("Zoë from Göteborg ✓"),
            "[redacted] from [redacted] ✓"
        );
    }

    #[test]
    fn a_message_is_scrubbed_as_whole_strings() {
        let m = Outgoing {
            key: "k-1".into(),
            channel: "email".into(),
            to: "pat@example.com".into(),
            from: "news@practice.example".into(),
            subject: Some("Your visit on Monday".into()),
            text: "Hi Pat, see you soon".into(),
            html: Some("<p>Hi Pat, see you soon</p>".into()),
            rfc5322: None,
            patient: Vec::new(),
        };
        let r = Redactor::message(&m);
        assert_eq!(
            r.redact("k-1 to pat@example.com from news@practice.example: Your visit on Monday / Hi Pat, see you soon / <p>Hi Pat, see you soon</p>"),
            "k-1 to [redacted] from news@practice.example: [redacted] / [redacted] / [redacted]"
        );
        // Whole strings: a part of the text alone is not known to be patient data.
        assert_eq!(r.redact("Hi Pat"), "Hi Pat");
    }

    /// A send's row gives the contact's name and, for an SMS, the number's
    /// national form: a provider's error quoting either is scrubbed.
    #[test]
    fn a_send_scrubs_the_name_and_the_number_in_its_national_form() {
        let effect = crate::outbox::DueEffect {
            id: 1,
            key: "k-1".into(),
            kind: crate::outbox::EffectKind::Message,
            payload: json!({"key": "k-1", "channel": "sms", "to": "+16175550142",
                "placeholders": {"firstname": "Jane", "lastname": "Doe", "practice": "Riverside", "owner": ""},
                "rendered": {"from": "+16175550100", "text": "See you Monday"}})
            .to_string(),
            channel: Some("sms".into()),
            contact_id: Some("c1".into()),
            screened: 0,
            attempts: 0,
            exempt: false,
        };
        let m = crate::plugins::pool::outgoing(&effect).unwrap();
        let r = Redactor::message(&m);
        assert_eq!(
            r.redact("invalid number (617) 555-0142 for Jane Doe; 6175550142"),
            "invalid number [redacted] for [redacted] [redacted]; [redacted]"
        );
        assert_eq!(r.redact("practice Riverside"), "practice Riverside");
        // Names count as whole words only, short ones too.
        let effect = crate::outbox::DueEffect {
            payload: json!({"key": "k-2", "channel": "email", "to": "tim.li@example.com",
                "placeholders": {"firstname": "Tim", "lastname": "Li"},
                "rendered": {"envelope_from": "news@practice.example", "subject": "Hello",
                    "text": "Hi", "rfc5322_base64": ""}})
            .to_string(),
            channel: Some("email".into()),
            ..effect
        };
        let r = Redactor::message(&crate::plugins::pool::outgoing(&effect).unwrap());
        assert_eq!(
            r.redact("timeout for Tim Li (tim.li@example.com); LIMIT reached, Li's"),
            "timeout for [redacted] [redacted] ([redacted]); LIMIT reached, [redacted]'s"
        );
    }

    #[test]
    fn nothing_to_scrub_returns_the_text() {
        let r = Redactor::none();
        assert_eq!(r.redact("Ann ann@example.com"), "Ann ann@example.com");
        let s = String::from("unchanged");
        let p = s.as_ptr();
        let back = Redactor::none().redact_string(s);
        assert_eq!(back.as_ptr(), p, "returned without a copy");
        assert_eq!(
            contact(json!({"id": "c1", "first_name": "Ann"})).redact_string("hi Ann".into()),
            "hi [redacted]"
        );
        assert!(!format!("{:?}", contact(json!({"first_name": "Ann"}))).contains("Ann"));
    }
}
