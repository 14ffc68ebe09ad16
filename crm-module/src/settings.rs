//! Module-wide settings (SPEC §6) the engine reads: identity, time zone,
//! default run window and the SMS keywords. Stored as one JSON document in
//! the `settings` table and cached by the worker.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::schedule::{RunWindow, parse_tz};

/// Default SMS opt-out keywords (matched case- and space-insensitively).
pub const DEFAULT_OPT_OUT_KEYWORDS: &[&str] = &[
    "STOP",
    "STOPALL",
    "UNSUBSCRIBE",
    "CANCEL",
    "END",
    "QUIT",
    "REVOKE",
    "OPTOUT",
    "OPT OUT",
];
/// Default SMS opt-in keywords.
pub const DEFAULT_OPT_IN_KEYWORDS: &[&str] = &["START", "UNSTOP", "YES"];

/// The settings document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The practice's name (the `{{practice}}` placeholder).
    pub practice_name: String,
    /// How the module is called in the host's UI.
    #[serde(default = "default_module_name")]
    pub module_name: String,
    /// The practice's IANA time zone: run windows and practice days use it.
    pub time_zone: String,
    /// The run window new automations start with.
    #[serde(default = "RunWindow::business_hours")]
    pub default_run_window: RunWindow,
    /// SMS replies that opt the number out.
    #[serde(default = "default_opt_out")]
    pub sms_opt_out_keywords: Vec<String>,
    /// SMS replies that opt the number back in.
    #[serde(default = "default_opt_in")]
    pub sms_opt_in_keywords: Vec<String>,
    /// SMS replies answered with the practice's name, contact and opt-out instructions.
    #[serde(default = "default_help")]
    pub sms_help_keywords: Vec<String>,
    /// The practice's phone number, given in HELP answers.
    #[serde(default)]
    pub practice_phone: Option<String>,
}

fn default_module_name() -> String {
    "CRM".into()
}

fn default_opt_out() -> Vec<String> {
    DEFAULT_OPT_OUT_KEYWORDS
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn default_help() -> Vec<String> {
    ["HELP", "INFO"].iter().map(|s| s.to_string()).collect()
}

fn default_opt_in() -> Vec<String> {
    DEFAULT_OPT_IN_KEYWORDS
        .iter()
        .map(|s| s.to_string())
        .collect()
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            practice_name: "Our practice".into(),
            module_name: default_module_name(),
            time_zone: "UTC".into(),
            default_run_window: RunWindow::business_hours(),
            sms_opt_out_keywords: default_opt_out(),
            sms_opt_in_keywords: default_opt_in(),
            sms_help_keywords: default_help(),
            practice_phone: None,
        }
    }
}

/// Settings with the time zone parsed, as the core uses them.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The document.
    pub doc: Settings,
    /// Parsed time zone.
    pub tz: chrono_tz::Tz,
}

impl Settings {
    /// Validates every field; errors name the field.
    pub fn validate(&self) -> Result<Resolved> {
        let name = self.practice_name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(Error::invalid("practice_name: must be 1 to 200 characters"));
        }
        if self.module_name.trim().is_empty() || self.module_name.chars().count() > 100 {
            return Err(Error::invalid("module_name: must be 1 to 100 characters"));
        }
        let tz =
            parse_tz(&self.time_zone).map_err(|m| Error::invalid(format!("time_zone: {m}")))?;
        self.default_run_window
            .validate()
            .map_err(|m| Error::invalid(format!("default_run_window: {m}")))?;
        for (field, list) in [
            ("sms_opt_out_keywords", &self.sms_opt_out_keywords),
            ("sms_opt_in_keywords", &self.sms_opt_in_keywords),
            ("sms_help_keywords", &self.sms_help_keywords),
        ] {
            if list.is_empty() || list.len() > 50 {
                return Err(Error::invalid(format!("{field}: 1 to 50 keywords")));
            }
            if list
                .iter()
                .any(|k| k.trim().is_empty() || k.chars().count() > 30)
            {
                return Err(Error::invalid(format!(
                    "{field}: keywords are 1 to 30 characters"
                )));
            }
        }
        Ok(Resolved {
            doc: self.clone(),
            tz,
        })
    }
}

/// Folds a keyword or an SMS body for keyword matching: upper case, no spaces
/// or punctuation ("Opt out!" → "OPTOUT").
pub fn fold_keyword(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_uppercase)
        .collect()
}

impl Resolved {
    /// True when an SMS body is an opt-out keyword.
    pub fn is_opt_out(&self, body: &str) -> bool {
        let b = fold_keyword(body);
        !b.is_empty()
            && self
                .doc
                .sms_opt_out_keywords
                .iter()
                .any(|k| fold_keyword(k) == b)
    }

    /// True when an SMS body is a HELP keyword.
    pub fn is_help(&self, body: &str) -> bool {
        let b = fold_keyword(body);
        !b.is_empty()
            && self
                .doc
                .sms_help_keywords
                .iter()
                .any(|k| fold_keyword(k) == b)
    }

    /// The answer to a STOP: no marketing, how to come back.
    pub fn stop_confirmation(&self) -> String {
        format!(
            "{}: you are unsubscribed and will receive no more text messages. Reply START to resubscribe.",
            self.doc.practice_name
        )
    }

    /// The answer to HELP: who we are, how to reach us, how to stop.
    pub fn help_answer(&self) -> String {
        match &self.doc.practice_phone {
            Some(p) => format!(
                "{}: for help call {p}. Reply STOP to opt out.",
                self.doc.practice_name
            ),
            None => format!(
                "{}: for help contact the practice. Reply STOP to opt out.",
                self.doc.practice_name
            ),
        }
    }

    /// True when an SMS body is an opt-in keyword.
    pub fn is_opt_in(&self, body: &str) -> bool {
        let b = fold_keyword(body);
        !b.is_empty()
            && self
                .doc
                .sms_opt_in_keywords
                .iter()
                .any(|k| fold_keyword(k) == b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_match_case_and_space_insensitively() {
        let r = Settings::default().validate().unwrap();
        for b in ["stop", " Stop ", "opt out", "OPT-OUT", "Unsubscribe."] {
            assert!(r.is_opt_out(b), "{b}");
        }
        for b in ["stop please call me", "yes please", ""] {
            assert!(!r.is_opt_out(b), "{b}");
        }
        assert!(r.is_opt_in("start"));
    }

    #[test]
    fn validation_names_the_field() {
        let s = Settings {
            time_zone: "Nowhere/Land".into(),
            ..Settings::default()
        };
        assert!(s.validate().unwrap_err().to_string().contains("time_zone"));
        let s = Settings {
            practice_name: " ".into(),
            ..Settings::default()
        };
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("practice_name")
        );
    }
}
