//! SMS text measurement, segmentation and phone-number normalization.
//!
//! Implements the GSM 03.38 / 3GPP TS 23.038 rules carriers apply to a text
//! message, without national language shift tables:
//!
//! * A text made only of characters from the GSM 7-bit default alphabet (or
//!   its extension table) is sent as **GSM-7**: a single message holds 160
//!   septets, a concatenated (multi-part) message 153 septets per segment,
//!   because the user data header takes the rest. Extension-table characters
//!   (`^ { } \ [ ~ ] | €` and form feed) are an escape plus a character, so
//!   they cost 2 septets, and the pair is never split across segments (a
//!   segment may therefore hold only 152 septets).
//! * One character outside that alphabet switches the **whole** text to
//!   **UCS-2** (in practice UTF-16): 70 code units in a single message, 67 per
//!   segment when concatenated. Characters outside the Basic Multilingual
//!   Plane (most emoji) take 2 code units, and a surrogate pair is never
//!   split across segments (a segment may therefore hold only 66 units).
//!
//! One segment costs one credit.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;

/// Septets in a single (non-concatenated) GSM-7 message.
const GSM7_SINGLE: usize = 160;
/// Septets per segment of a concatenated GSM-7 message (160 minus the UDH).
const GSM7_MULTI: usize = 153;
/// UTF-16 code units in a single (non-concatenated) UCS-2 message.
const UCS2_SINGLE: usize = 70;
/// UTF-16 code units per segment of a concatenated UCS-2 message.
const UCS2_MULTI: usize = 67;
/// How many offending characters [`SmsMeasure::non_gsm`] lists at most.
const MAX_NON_GSM: usize = 10;
/// Longest raw phone number [`normalize_e164`] accepts, in bytes.
const MAX_PHONE_INPUT: usize = 64;

/// Character encoding of an SMS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// GSM 03.38 7-bit default alphabet (with its extension table).
    Gsm7,
    /// UCS-2 / UTF-16, used as soon as one character is not in the GSM alphabet.
    Ucs2,
}

impl Encoding {
    /// Units a single, non-concatenated message can hold.
    fn single_limit(self) -> usize {
        match self {
            Encoding::Gsm7 => GSM7_SINGLE,
            Encoding::Ucs2 => UCS2_SINGLE,
        }
    }

    /// Units each segment of a concatenated message can hold.
    fn multi_limit(self) -> usize {
        match self {
            Encoding::Gsm7 => GSM7_MULTI,
            Encoding::Ucs2 => UCS2_MULTI,
        }
    }

    /// Units `c` takes in this encoding.
    fn units(self, c: char) -> usize {
        match self {
            // Only chosen when every char is representable; the fallback is
            // never reached for texts measured by this module.
            Encoding::Gsm7 => gsm7_septets(c).unwrap_or(1),
            Encoding::Ucs2 => c.len_utf16(),
        }
    }
}

/// What the editor shows under an SMS text.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct SmsMeasure {
    /// Encoding the text will be sent with.
    pub encoding: Encoding,
    /// User-perceived characters, counted as Unicode scalar values.
    pub characters: usize,
    /// GSM-7 septets (extension characters count 2) or UTF-16 code units.
    pub units: usize,
    /// Segments a carrier sends; 0 for an empty text.
    pub segments: usize,
    /// Units per segment for this text: 160 / 153 for GSM-7, 70 / 67 for
    /// UCS-2 (single message / concatenated).
    pub per_segment: usize,
    /// Units left in the last segment before another segment is needed.
    pub remaining_in_segment: usize,
    /// Credits the text costs (one per segment).
    pub credits: usize,
    /// The first distinct characters (at most 10, in order of appearance)
    /// that forced UCS-2, for the editor to highlight; empty for GSM-7.
    pub non_gsm: Vec<char>,
}

/// Measures `text` as an SMS: encoding, length in units, segments and credits.
pub fn measure(text: &str) -> SmsMeasure {
    let mut characters = 0;
    let mut septets = 0;
    let mut utf16_units = 0;
    let mut all_gsm = true;
    let mut non_gsm = Vec::new();
    for c in text.chars() {
        characters += 1;
        utf16_units += c.len_utf16();
        match gsm7_septets(c) {
            Some(n) => septets += n,
            None => {
                all_gsm = false;
                if non_gsm.len() < MAX_NON_GSM && !non_gsm.contains(&c) {
                    non_gsm.push(c);
                }
            }
        }
    }
    let (encoding, units) = if all_gsm {
        (Encoding::Gsm7, septets)
    } else {
        (Encoding::Ucs2, utf16_units)
    };

    let plan = plan_segments(text, encoding, units);
    let segments = plan.len();
    let (per_segment, remaining_in_segment) = match plan.last() {
        None => (encoding.single_limit(), encoding.single_limit()),
        Some(_) if segments == 1 => (
            encoding.single_limit(),
            encoding.single_limit().saturating_sub(units),
        ),
        Some(last) => (
            encoding.multi_limit(),
            encoding.multi_limit().saturating_sub(last.units),
        ),
    };

    SmsMeasure {
        encoding,
        characters,
        units,
        segments,
        per_segment,
        remaining_in_segment,
        credits: segments,
        non_gsm,
    }
}

/// True when every char is in the GSM 03.38 default alphabet or its extension table.
pub fn is_gsm7(text: &str) -> bool {
    text.chars().all(|c| gsm7_septets(c).is_some())
}

/// Septets a char takes in GSM-7: `Some(1)` basic table, `Some(2)` extension
/// table (`^ { } \ [ ~ ] | €`, form feed), `None` not representable.
pub fn gsm7_septets(c: char) -> Option<usize> {
    match c {
        // Extension table (reached through the 0x1B escape).
        '\u{000C}' | '^' | '{' | '}' | '\\' | '[' | '~' | ']' | '|' | '€' => Some(2),
        // Basic table, ASCII part: printable ASCII except the extension
        // characters above and the backtick, plus LF and CR.
        '\n' | '\r' | ' '..='_' | 'a'..='z' => Some(1),
        // Basic table, non-ASCII part.
        '£' | '¥' | 'è' | 'é' | 'ù' | 'ì' | 'ò' | 'Ç' | 'Ø' | 'ø' | 'Å' | 'å' | 'Δ' | 'Φ' | 'Γ'
        | 'Λ' | 'Ω' | 'Π' | 'Ψ' | 'Σ' | 'Θ' | 'Ξ' | 'Æ' | 'æ' | 'ß' | 'É' | '¤' | '¡' | 'Ä'
        | 'Ö' | 'Ñ' | 'Ü' | '§' | '¿' | 'ä' | 'ö' | 'ñ' | 'ü' | 'à' => Some(1),
        _ => None,
    }
}

/// Splits a text into the segments a carrier would send (for previews):
/// GSM-7 never splits an escape pair across segments; UCS-2 never splits a
/// surrogate pair.
///
/// An empty text gives no segment; a text that fits one message gives itself.
/// Segments are cut between Unicode scalar values, so a multi-character
/// grapheme (a ZWJ emoji sequence, a letter with a combining accent) may be
/// cut between its parts, as carriers do.
pub fn split_segments(text: &str) -> Vec<String> {
    let encoding = if is_gsm7(text) {
        Encoding::Gsm7
    } else {
        Encoding::Ucs2
    };
    let units = text.chars().map(|c| encoding.units(c)).sum();
    plan_segments(text, encoding, units)
        .into_iter()
        .map(|s| text.get(s.start..s.end).unwrap_or_default().to_owned())
        .collect()
}

/// One planned segment: a byte range of the text and the units it takes.
struct Segment {
    start: usize,
    end: usize,
    units: usize,
}

/// Cuts `text` (taking `total_units` in `encoding`) into segments.
fn plan_segments(text: &str, encoding: Encoding, total_units: usize) -> Vec<Segment> {
    if text.is_empty() {
        return Vec::new();
    }
    if total_units <= encoding.single_limit() {
        return vec![Segment {
            start: 0,
            end: text.len(),
            units: total_units,
        }];
    }
    let limit = encoding.multi_limit();
    let mut segments = Vec::new();
    let mut current = Segment {
        start: 0,
        end: 0,
        units: 0,
    };
    for (at, c) in text.char_indices() {
        let u = encoding.units(c);
        // A char is never split: if it does not fit, it opens the next segment.
        if current.units + u > limit && current.units > 0 {
            let next = Segment {
                start: at,
                end: at,
                units: 0,
            };
            segments.push(std::mem::replace(&mut current, next));
        }
        current.units += u;
        current.end = at + c.len_utf8();
    }
    if current.units > 0 {
        segments.push(current);
    }
    segments
}

/// Normalizes a phone number to E.164 (`"+16175550123"`) with the
/// `phonenumber` crate, parsing national numbers in `default_region`
/// (ISO 3166 alpha-2 like `"US"`, case-insensitive); `Err` names the problem
/// (`"not a valid phone number for region US"`), never echoes the input.
///
/// Only digits, spaces, `+ - . / ( )` are accepted: extensions (`ext. 45`,
/// `x45`, `#45`), letters and `tel:` URIs are rejected, because an SMS cannot
/// reach an extension and sending to the main line could reach someone else.
///
/// Parsing and the validity check cost about 200,000 instructions per
/// number, and every SMS to a contact normalizes the same stored number
/// again: results (refusals included) are kept per thread, by region and
/// number, for up to [`NORMALIZED_KEPT`] numbers (then the cache starts
/// over). The result depends on nothing else.
pub fn normalize_e164(raw: &str, default_region: &str) -> Result<String, String> {
    thread_local! {
        static NORMALIZED: RefCell<Normalized> = RefCell::new(HashMap::new());
    }
    let raw = raw.trim();
    if let Some(known) = NORMALIZED.with_borrow(|c| c.get(default_region)?.get(raw).cloned()) {
        return known;
    }
    let result = parse_e164(raw, default_region);
    NORMALIZED.with_borrow_mut(|c| {
        if c.values().map(HashMap::len).sum::<usize>() >= NORMALIZED_KEPT {
            c.clear();
        }
        c.entry(default_region.to_owned())
            .or_default()
            .insert(raw.to_owned(), result.clone());
    });
    result
}

/// Results of [`normalize_e164`] by region, then number.
type Normalized = HashMap<String, HashMap<String, Result<String, String>>>;

/// Numbers [`normalize_e164`] keeps per thread.
pub const NORMALIZED_KEPT: usize = 4096;

/// [`normalize_e164`] without its cache.
fn parse_e164(raw: &str, default_region: &str) -> Result<String, String> {
    let (number, invalid) = parse_number(raw, default_region)?;
    let mut e164 = String::new();
    // The formatter reports an error (rather than panicking through
    // `to_string`) when it has no metadata for the number's country.
    write!(e164, "{}", number.format().mode(phonenumber::Mode::E164)).map_err(|_| invalid)?;
    Ok(e164)
}

/// The number's E.164 and national forms (`"+61412345678"`,
/// `"0412 345 678"`), national numbers read in `default_region`; empty
/// when it is not a valid number there. Numbers are stored as the host
/// wrote them, and outside North America the two forms differ in their
/// last digits (the trunk prefix `0` against the country code): matching
/// an inbound number against stored ones needs both.
pub fn number_forms(raw: &str, default_region: &str) -> Vec<String> {
    let Ok((number, _)) = parse_number(raw.trim(), default_region) else {
        return Vec::new();
    };
    // The formatter's patterns are the crate's: kept from taking the
    // engine down as the parser is.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        [phonenumber::Mode::E164, phonenumber::Mode::National]
            .into_iter()
            .filter_map(|mode| {
                let mut form = String::new();
                write!(form, "{}", number.format().mode(mode)).ok()?;
                Some(form)
            })
            .collect()
    }))
    .unwrap_or_default()
}

/// Parses and validates a number (national numbers in `default_region`),
/// with the text that says it is invalid for later checks; `Err` never
/// echoes the input.
fn parse_number(
    raw: &str,
    default_region: &str,
) -> Result<(phonenumber::PhoneNumber, String), String> {
    if raw.is_empty() {
        return Err("phone number is empty".to_owned());
    }
    if raw.len() > MAX_PHONE_INPUT {
        return Err("phone number is too long".to_owned());
    }
    if !raw
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '+' | '-' | '.' | '/' | '(' | ')'))
    {
        return Err(
            "phone number may only contain digits, spaces and + - . / ( ) \
             (no letters or extensions)"
                .to_owned(),
        );
    }
    let region: phonenumber::country::Id = default_region
        .trim()
        .to_ascii_uppercase()
        .parse()
        .map_err(|_| "default region is not a known ISO 3166 alpha-2 code".to_owned())?;
    let region_name: &str = region.as_ref();
    let invalid = || {
        if raw.starts_with('+') {
            "not a valid phone number".to_owned()
        } else {
            format!("not a valid phone number for region {region_name}")
        }
    };

    // The parser has had panics on malformed input in past releases; keep one
    // bad number from taking the engine down.
    let parsed = std::panic::catch_unwind(|| {
        phonenumber::parse(Some(region), raw).map(|n| (n.is_valid(), n))
    })
    .map_err(|_| invalid())?;
    let number = match parsed {
        Ok((true, number)) => number,
        Ok((false, _)) => return Err(invalid()),
        Err(phonenumber::ParseError::InvalidCountryCode) => {
            return Err("phone number has an unknown country calling code".to_owned());
        }
        Err(phonenumber::ParseError::TooLong) => {
            return Err("phone number has too many digits".to_owned());
        }
        Err(phonenumber::ParseError::TooShortNsn | phonenumber::ParseError::TooShortAfterIdd) => {
            return Err("phone number has too few digits".to_owned());
        }
        Err(_) => return Err(invalid()),
    };
    if number.extension().is_some() {
        return Err("phone number has an extension, which SMS cannot reach".to_owned());
    }
    Ok((number, invalid()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The GSM 03.38 default alphabet laid out by code point, 16 per row
    /// (0x00..=0x7F); `\u{1B}` at 0x1B stands for ESC, which is not a char.
    const BASIC_TABLE: [&str; 8] = [
        "@£$¥èéùìòÇ\nØø\rÅå",
        "Δ_ΦΓΛΩΠΨΣΘΞ\u{1B}ÆæßÉ",
        " !\"#¤%&'()*+,-./",
        "0123456789:;<=>?",
        "¡ABCDEFGHIJKLMNO",
        "PQRSTUVWXYZÄÖÑÜ§",
        "¿abcdefghijklmno",
        "pqrstuvwxyzäöñüà",
    ];
    /// The GSM 03.38 extension table (after ESC): 0x0A FF, 0x14 ^, 0x28 {,
    /// 0x29 }, 0x2F \, 0x3C [, 0x3D ~, 0x3E ], 0x40 |, 0x65 €.
    const EXTENSION_TABLE: &str = "\u{0C}^{}\\[~]|€";

    fn rep(s: &str, n: usize) -> String {
        s.repeat(n)
    }

    /// (label, text, encoding, units, segments), each derived by hand.
    fn table() -> Vec<(&'static str, String, Encoding, usize, usize)> {
        use Encoding::{Gsm7, Ucs2};
        // 8 + 5 + 12 + 3 + 4 + 4 + 2 + 3 + 5 + 4 = 50
        let appt = "Hi Ann, your appointment is Mon Jan 5 at 9:30 AM. ";
        // 6 + 2 + 3 + 9 = 20
        let confirm = "Reply C to confirm. ";
        // 6 + 5 + 3 + 4 + 3 = 21
        let stop = "Reply STOP to opt out";
        // 6 + 7 + 8 = 21
        let practice = "Smith Family Dental: ";
        // 7 + 7 + 3 + 8 + 6 + 4 + 6 + 5 + 10 + 6 = 62
        let arrive = "Please arrive 15 minutes early and bring your insurance card. ";
        vec![
            // Nothing to send: 0 units, 0 segments.
            ("empty", String::new(), Gsm7, 0, 0),
            ("one a", "a".into(), Gsm7, 1, 1),
            // 160 <= 160: fits one message.
            ("160 a", rep("a", 160), Gsm7, 160, 1),
            // 161 > 160: concatenated, 153 + 8.
            ("161 a", rep("a", 161), Gsm7, 161, 2),
            // 306 = 153 * 2: exactly two full parts.
            ("306 a", rep("a", 306), Gsm7, 306, 2),
            // 307 = 153 * 2 + 1: a third part with 1 septet.
            ("307 a", rep("a", 307), Gsm7, 307, 3),
            // 459 = 153 * 3.
            ("459 a", rep("a", 459), Gsm7, 459, 3),
            // "Price: 5" is 8 septets + € (extension) 2 = 10.
            ("euro", "Price: 5€".into(), Gsm7, 10, 1),
            // 80 * 2 = 160 <= 160: one message.
            ("80 {", rep("{", 80), Gsm7, 160, 1),
            // 81 * 2 = 162 > 160: parts of 153, pairs unsplit: 76 pairs
            // (152) then 5 pairs (10) -> 2 segments.
            ("81 {", rep("{", 81), Gsm7, 162, 2),
            // 80 * 2 = 160 and 81 * 2 = 162, as for '{'.
            ("80 €", rep("€", 80), Gsm7, 160, 1),
            ("81 €", rep("€", 81), Gsm7, 162, 2),
            // 158 + 2 = 160 <= 160: one message.
            ("158 a + €", format!("{}€", rep("a", 158)), Gsm7, 160, 1),
            // 159 + 2 = 161 > 160: 153 a, then 6 a + € = 8 -> 2.
            ("159 a + €", format!("{}€", rep("a", 159)), Gsm7, 161, 2),
            // 152 + 2 + 152 = 306 = 2 * 153, but the pair cannot straddle:
            // [152 a] [€ + 151 a = 153] [1 a] -> 3 segments.
            (
                "escape straddles",
                format!("{}€{}", rep("a", 152), rep("a", 152)),
                Gsm7,
                306,
                3,
            ),
            // é is basic (0x05): 1 septet.
            ("e acute", "é".into(), Gsm7, 1, 1),
            // á is not in GSM 03.38: UCS-2, 1 unit.
            ("a acute", "á".into(), Ucs2, 1, 1),
            // Capital Ç is basic (0x09).
            ("C cedilla", "Ç".into(), Gsm7, 1, 1),
            // Lowercase ç is not in the table.
            ("c cedilla", "ç".into(), Ucs2, 1, 1),
            // ê is not in the table.
            ("e circumflex", "ê".into(), Ucs2, 1, 1),
            // ë is not in the table (ä ö ü are).
            ("e diaeresis", "ë".into(), Ucs2, 1, 1),
            // À is not in the table (only lowercase à is).
            ("A grave", "À".into(), Ucs2, 1, 1),
            // All 12 basic: ñ Ñ ü Ü ä Ä ö Ö à § ¿ ¡.
            ("basic latin-1", "ñÑüÜäÄöÖà§¿¡".into(), Gsm7, 12, 1),
            // 159 a + 😀 (2 units) = 161 UTF-16 units > 70: parts of 67:
            // [67 a] [67 a] [25 a + 😀 = 27] -> 3.
            (
                "emoji in long text",
                format!("{}😀", rep("a", 159)),
                Ucs2,
                161,
                3,
            ),
            // 70 <= 70: one message.
            ("70 a acute", rep("á", 70), Ucs2, 70, 1),
            // 71 > 70: parts of 67: 67 + 4 -> 2.
            ("71 a acute", rep("á", 71), Ucs2, 71, 2),
            // 69 a + á = 70 units (the a's become UCS-2 too).
            ("69 a + a acute", format!("{}á", rep("a", 69)), Ucs2, 70, 1),
            // 70 a + á = 71 units > 70 -> 67 + 4 -> 2.
            ("70 a + a acute", format!("{}á", rep("a", 70)), Ucs2, 71, 2),
            // 35 * 2 = 70 <= 70: one message.
            ("35 emoji", rep("😀", 35), Ucs2, 70, 1),
            // 36 * 2 = 72 > 70: a 34th pair would make 68 > 67, so
            // [33 emoji = 66] [3 emoji = 6] -> 2.
            ("36 emoji", rep("😀", 36), Ucs2, 72, 2),
            // 66 + 2 + 66 = 134 = 2 * 67, but the pair cannot straddle:
            // [66 a] [😀 + 65 a = 67] [1 a] -> 3.
            (
                "surrogate straddles",
                format!("{}😀{}", rep("a", 66), rep("a", 66)),
                Ucs2,
                134,
                3,
            ),
            // Cyrillic, 6 BMP letters: 6 units.
            ("cyrillic", "Привет".into(), Ucs2, 6, 1),
            // The 10 Greek capitals of the basic table, 1 septet each.
            ("greek in gsm", "ΔΦΓΛΩΠΨΣΘΞ".into(), Gsm7, 10, 1),
            // Lowercase δ is not in the table.
            ("greek delta lower", "δ".into(), Ucs2, 1, 1),
            // Greek capital alpha/beta (U+0391, U+0392) look like A/B but
            // are not in the table; Γ is, but the text goes UCS-2: 3 units.
            ("greek alpha beta gamma", "ΑΒΓ".into(), Ucs2, 3, 1),
            // OHM SIGN U+2126 is not GREEK CAPITAL OMEGA U+03A9.
            ("ohm sign", "\u{2126}".into(), Ucs2, 1, 1),
            // 5 + LF + 5 + CR + LF = 13 septets.
            ("newlines", "Line1\nLine2\r\n".into(), Gsm7, 13, 1),
            // Form feed is in the extension table: 2 septets.
            ("form feed", "\u{0C}".into(), Gsm7, 2, 1),
            // TAB is not representable.
            ("tab", "a\tb".into(), Ucs2, 3, 1),
            // A literal ESC char is not a text character.
            ("escape char", "\u{1B}".into(), Ucs2, 1, 1),
            // Backtick is not in either table.
            ("backtick", "`".into(), Ucs2, 1, 1),
            // 6 extension characters * 2 = 12 septets.
            ("brackets etc", "[]~|\\^".into(), Gsm7, 12, 1),
            // { } are extension: 2 + 2 = 4.
            ("braces", "{}".into(), Gsm7, 4, 1),
            // ¤ is basic (0x24).
            ("currency sign", "¤".into(), Gsm7, 1, 1),
            // £ 1 0 = 3 septets; $ ¥ also basic: "$¥" = 2.
            ("pound", "£10".into(), Gsm7, 3, 1),
            ("dollar yen", "$¥".into(), Gsm7, 2, 1),
            // @ $ _ ! # % & all basic: 7 septets.
            ("basic punctuation", "@$_!#%&".into(), Gsm7, 7, 1),
            // NO-BREAK SPACE U+00A0 is not a GSM space.
            ("nbsp", "a\u{A0}b".into(), Ucs2, 3, 1),
            // "Don" 3 + ’ (U+2019) 1 + "t forget" 8 = 12 units.
            ("smart apostrophe", "Don’t forget".into(), Ucs2, 12, 1),
            // 50 + 20 + 21 = 91 septets <= 160.
            ("reminder", format!("{appt}{confirm}{stop}"), Gsm7, 91, 1),
            // 21 + 50 + 62 + 20 + 21 = 174 > 160: 153 + 21 -> 2.
            (
                "long reminder",
                format!("{practice}{appt}{arrive}{confirm}{stop}"),
                Gsm7,
                174,
                2,
            ),
            // Same 91 characters with "Zoë" for "Ann": ë forces UCS-2,
            // 91 units > 70 -> 67 + 24 -> 2.
            (
                "reminder with Zoë",
                format!("{}{confirm}{stop}", appt.replace("Ann", "Zoë")),
                Ucs2,
                91,
                2,
            ),
            // Arabic, 5 BMP letters.
            ("arabic", "مرحبا".into(), Ucs2, 5, 1),
            // CJK, 4 BMP ideographs.
            ("cjk", "你好世界".into(), Ucs2, 4, 1),
            // U+20000 (CJK Extension B) is outside the BMP: 2 units.
            ("cjk ext b", "\u{20000}".into(), Ucs2, 2, 1),
            // 👨 2 + ZWJ 1 + 👩 2 + ZWJ 1 + 👧 2 = 8 units.
            ("zwj family", "👨\u{200D}👩\u{200D}👧".into(), Ucs2, 8, 1),
            // 👍 2 + skin tone modifier U+1F3FD 2 = 4 units.
            ("skin tone", "👍🏽".into(), Ucs2, 4, 1),
        ]
    }

    #[test]
    fn table_has_enough_rows() {
        assert!(table().len() >= 30);
    }

    #[test]
    fn measure_matches_hand_derived_table() {
        for (label, text, encoding, units, segments) in table() {
            let m = measure(&text);
            assert_eq!(m.encoding, encoding, "{label}: encoding");
            assert_eq!(m.units, units, "{label}: units");
            assert_eq!(m.segments, segments, "{label}: segments");
            assert_eq!(m.credits, segments, "{label}: credits");
            assert_eq!(m.characters, text.chars().count(), "{label}: characters");
            assert_eq!(
                is_gsm7(&text),
                encoding == Encoding::Gsm7,
                "{label}: is_gsm7"
            );
            assert_eq!(m.non_gsm.is_empty(), encoding == Encoding::Gsm7, "{label}");
            let (single, multi) = match encoding {
                Encoding::Gsm7 => (160, 153),
                Encoding::Ucs2 => (70, 67),
            };
            let expected_per = if segments > 1 { multi } else { single };
            assert_eq!(m.per_segment, expected_per, "{label}: per_segment");
            assert!(m.remaining_in_segment <= m.per_segment, "{label}");
        }
    }

    #[test]
    fn split_is_consistent_with_measure() {
        for (label, text, encoding, _, _) in table() {
            let m = measure(&text);
            let parts = split_segments(&text);
            assert_eq!(parts.len(), m.segments, "{label}: split count");
            assert_eq!(parts.concat(), text, "{label}: split loses text");
            let part_units: Vec<usize> = parts
                .iter()
                .map(|p| p.chars().map(|c| encoding.units(c)).sum())
                .collect();
            assert_eq!(part_units.iter().sum::<usize>(), m.units, "{label}");
            let limit = if parts.len() > 1 {
                encoding.multi_limit()
            } else {
                encoding.single_limit()
            };
            assert!(part_units.iter().all(|&u| u > 0 && u <= limit), "{label}");
            if let Some(last) = part_units.last() {
                assert_eq!(m.remaining_in_segment, limit - last, "{label}: remaining");
            }
        }
    }

    #[test]
    fn split_keeps_escape_pairs_together() {
        // 81 '{': 76 pairs (152 septets) fit 153, the 77th would make 154.
        let parts = split_segments(&"{".repeat(81));
        let lens: Vec<usize> = parts.iter().map(|p| p.chars().count()).collect();
        assert_eq!(lens, [76, 5]);
        // [152 a] [€ + 151 a] [a]
        let text = format!("{}€{}", "a".repeat(152), "a".repeat(152));
        let parts = split_segments(&text);
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0], "a".repeat(152));
        assert!(parts[1].starts_with('€'));
        assert_eq!(parts[2], "a");
        // 161 a -> 153 + 8.
        let lens: Vec<usize> = split_segments(&"a".repeat(161))
            .iter()
            .map(String::len)
            .collect();
        assert_eq!(lens, [153, 8]);
    }

    #[test]
    fn split_keeps_surrogate_pairs_together() {
        // 36 emoji: 33 (66 units) + 3 (6 units).
        let parts = split_segments(&"😀".repeat(36));
        let lens: Vec<usize> = parts.iter().map(|p| p.chars().count()).collect();
        assert_eq!(lens, [33, 3]);
        let m = measure(&"😀".repeat(36));
        assert_eq!((m.per_segment, m.remaining_in_segment), (67, 61));
    }

    #[test]
    fn remaining_and_per_segment() {
        let m = measure("");
        assert_eq!(
            (
                m.encoding,
                m.segments,
                m.per_segment,
                m.remaining_in_segment
            ),
            (Encoding::Gsm7, 0, 160, 160)
        );
        let m = measure(&"a".repeat(160));
        assert_eq!((m.per_segment, m.remaining_in_segment), (160, 0));
        // 161 -> last segment holds 8 of 153.
        let m = measure(&"a".repeat(161));
        assert_eq!((m.per_segment, m.remaining_in_segment), (153, 145));
        // One UCS-2 char: 70 - 1.
        let m = measure("á");
        assert_eq!((m.per_segment, m.remaining_in_segment), (70, 69));
    }

    #[test]
    fn non_gsm_lists_first_ten_distinct() {
        let m = measure("aáábçdêfghijklmnopqrstuvwxyz`");
        assert_eq!(m.non_gsm, ['á', 'ç', 'ê', '`']);
        let m = measure("ⅠⅡⅢⅣⅤⅥⅦⅧⅨⅩⅪⅫ");
        assert_eq!(m.non_gsm.len(), 10);
        assert_eq!(m.non_gsm[0], 'Ⅰ');
        assert!(measure("hello").non_gsm.is_empty());
    }

    #[test]
    fn basic_table_is_exact() {
        let chars: Vec<char> = BASIC_TABLE.concat().chars().collect();
        assert_eq!(chars.len(), 128);
        for (code, c) in chars.iter().enumerate() {
            if code == 0x1B {
                assert_eq!(gsm7_septets(*c), None, "ESC");
            } else {
                assert_eq!(gsm7_septets(*c), Some(1), "0x{code:02X} {c:?}");
            }
        }
        for c in EXTENSION_TABLE.chars() {
            assert_eq!(gsm7_septets(c), Some(2), "{c:?}");
        }
        // Nothing else anywhere in Unicode is representable.
        let (mut basic, mut ext) = (0, 0);
        for c in (0..=0x10FFFFu32).filter_map(char::from_u32) {
            match gsm7_septets(c) {
                Some(1) => basic += 1,
                Some(2) => ext += 1,
                Some(_) => unreachable!(),
                None => {}
            }
        }
        assert_eq!((basic, ext), (127, 10));
    }

    #[test]
    fn measure_serializes_snake_case() {
        let json = serde_json::to_value(measure("Hé")).expect("serializes");
        assert_eq!(json["encoding"], "gsm7");
        assert_eq!(json["non_gsm"], serde_json::json!([]));
        let json = serde_json::to_value(measure("ça`")).expect("serializes");
        assert_eq!(json["encoding"], "ucs2");
        assert_eq!(json["non_gsm"], serde_json::json!(["ç", "`"]));
        let schema = serde_json::to_string(&schemars::schema_for!(SmsMeasure)).expect("schema");
        assert!(schema.contains("\"gsm7\"") && schema.contains("\"ucs2\""));
    }

    #[test]
    fn normalize_known_numbers() {
        assert_eq!(
            normalize_e164("(617) 555-0123", "US").as_deref(),
            Ok("+16175550123")
        );
        assert_eq!(
            normalize_e164("+44 20 7946 0958", "US").as_deref(),
            Ok("+442079460958")
        );
        assert_eq!(
            normalize_e164("0612345678", "FR").as_deref(),
            Ok("+33612345678")
        );
        assert_eq!(
            normalize_e164(" 1 617.555.0123 ", "us").as_deref(),
            Ok("+16175550123")
        );
    }

    #[test]
    fn normalizing_again_answers_as_the_parser_does() {
        for (raw, region) in [
            ("(617) 555-0123", "US"),
            ("(617) 555-0123", "GB"),
            ("+16175550123", "FR"),
            (" 1 617.555.0123 ", "us"),
            ("0612345678", "FR"),
            ("0612345678", "US"),
            ("617-555-0123 ext. 45", "US"),
            ("12", "US"),
            ("+16175550123", "ZZ"),
        ] {
            let parsed = parse_e164(raw.trim(), region);
            assert_eq!(normalize_e164(raw, region), parsed, "{raw} {region}");
            assert_eq!(normalize_e164(raw, region), parsed, "{raw} {region}, again");
        }
    }

    #[test]
    fn normalize_errors_never_echo_input() {
        for raw in [
            "garbage-4242",
            "call me maybe",
            "12",
            "555-0199999999999999999999",
            "617-555-0123 ext. 45",
            "617-555-0123 #45",
            "tel:+1-617-555-0123",
            "+999 1234567",
            "",
            "   ",
            &"9".repeat(100),
        ] {
            let err = normalize_e164(raw, "US").expect_err(raw);
            assert!(!err.is_empty());
            if !raw.trim().is_empty() {
                assert!(!err.contains(raw.trim()), "{err} echoes input");
            }
            for digits in ["4242", "0123", "555", "1234567"] {
                assert!(!err.contains(digits), "{err} echoes digits");
            }
        }
        let err = normalize_e164("1234567", "US").expect_err("too short for US");
        assert_eq!(err, "not a valid phone number for region US");
        let err = normalize_e164("6175550123", "XX").expect_err("bad region");
        assert!(err.contains("region") && !err.contains("617"));
        let err = normalize_e164("6175550123", "").expect_err("empty region");
        assert!(err.contains("region"));
    }
}
