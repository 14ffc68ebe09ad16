//! Composing one marketing (or care) email with lettre's message builder.
//!
//! [`compose`] turns already-rendered parts into an RFC 5322 message, in two
//! stages: [`assemble`] validates and builds the parts and headers (what
//! the outbox stores), [`Assembled::rfc5322`] writes the MIME (what the
//! dispatcher does when it hands a message over). The message is
//! `multipart/alternative` with a text/plain part then a text/html part, the
//! compliant footer appended to both, a hidden preheader at the top of the
//! HTML, `List-Unsubscribe` / `List-Unsubscribe-Post` (RFC 2369, RFC 8058) for
//! marketing email, and a `Message-ID` derived from the outbox idempotency
//! key. Composition is deterministic: the same parts give byte-identical
//! output (the date comes from the caller, the MIME boundary from the key).
//!
//! Errors name the offending field only (`"to: not a valid address"`), never
//! an address, a name or any other contact data.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lettre::Address;
use lettre::address::Envelope;
use lettre::message::header::{Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};

/// Sender identity (settings, or a step's override).
#[derive(
    Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct SenderIdentity {
    /// Display name in `From`, e.g. the practice name.
    pub from_name: String,
    /// Sending address; its domain is also the `Message-ID` domain.
    pub from_address: String,
    /// Optional `Reply-To` address.
    pub reply_to: Option<String>,
}

/// Everything needed to build one email. All text is already rendered.
#[derive(Debug, Clone, Copy)]
pub struct EmailParts<'a> {
    /// Outbox idempotency key; the `Message-ID` is `<KEY@DOMAIN>` with DOMAIN
    /// the domain of the sender's `from_address` (characters outside
    /// `[A-Za-z0-9._+-]` are written as `=XX` hex bytes).
    pub message_key: &'a str,
    /// Recipient address (a bare address, no display name).
    pub to: &'a str,
    /// Who sends it.
    pub sender: &'a SenderIdentity,
    /// Subject, already rendered (non-ASCII is RFC 2047-encoded; line breaks
    /// and other control characters become spaces).
    pub subject: &'a str,
    /// Preheader (inbox preview text), already rendered as plain text (render
    /// it with `html = false`): it is HTML-escaped and inserted as a hidden
    /// block at the top of the HTML body only.
    pub preheader: &'a str,
    /// HTML body, already rendered. A fragment is wrapped into a complete
    /// document; a complete document keeps its own `<html>`/`<body>`.
    pub html_body: &'a str,
    /// Plain-text body; when `None` it is derived from `html_body` (tags
    /// stripped, basic entities decoded, links kept as `text (url)`).
    pub text_body: Option<&'a str>,
    /// The compliant footer (practice name, postal address, unsubscribe
    /// link), already rendered as HTML; appended to the HTML part.
    pub footer_html: &'a str,
    /// The same footer as plain text; appended to the text part.
    pub footer_text: &'a str,
    /// `https` URL for one-click `List-Unsubscribe` (RFC 8058).
    pub unsubscribe_url: Option<&'a str>,
    /// `mailto:` URL for `List-Unsubscribe`.
    pub unsubscribe_mailto: Option<&'a str>,
    /// Marketing email gets the `List-Unsubscribe` headers; care messages
    /// (false) do not (their footer is still appended).
    pub marketing: bool,
    /// The `Date` header (the module clock's time, so output is reproducible).
    pub date: SystemTime,
}

/// The composed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposedEmail {
    /// The `Message-ID` header value, angle brackets included: `<KEY@DOMAIN>`.
    pub message_id: String,
    /// The full message, CRLF line endings, ready for SMTP `DATA`.
    pub rfc5322: Vec<u8>,
    /// The final HTML part (preheader and footer included), before encoding.
    pub html: String,
    /// The final text part (footer included), before encoding.
    pub text: String,
    /// SMTP envelope sender (`MAIL FROM`).
    pub envelope_from: String,
    /// SMTP envelope recipient (`RCPT TO`).
    pub envelope_to: String,
}

/// The `List-Unsubscribe` header (RFC 2369): `<https://…>, <mailto:…>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListUnsubscribe(pub String);

impl Header for ListUnsubscribe {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe")
    }

    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self(s.to_owned()))
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), self.0.clone())
    }
}

/// The `List-Unsubscribe-Post` header (RFC 8058), always
/// `List-Unsubscribe=One-Click`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListUnsubscribePost;

impl ListUnsubscribePost {
    /// The only value RFC 8058 defines.
    pub const VALUE: &'static str = "List-Unsubscribe=One-Click";
}

impl Header for ListUnsubscribePost {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe-Post")
    }

    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        if s.trim() == Self::VALUE {
            Ok(Self)
        } else {
            Err("unexpected List-Unsubscribe-Post value".into())
        }
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), Self::VALUE.to_owned())
    }
}

/// An email validated and assembled, not yet written out as MIME: the final
/// HTML and text parts and every header value. This is what an outbox
/// message payload stores as `rendered` (field for field); the dispatcher
/// writes the MIME with [`Assembled::rfc5322`] when it hands the message
/// over, so the costly encoding stays out of the ingesting transaction.
/// Writing out is deterministic: the same `Assembled` gives the same bytes
/// on every delivery attempt.
#[derive(
    Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct Assembled {
    /// The `Message-ID` header value, angle brackets included: `<KEY@DOMAIN>`.
    pub message_id: String,
    /// Who sends it (`From`, `Reply-To`).
    pub from: SenderIdentity,
    /// SMTP envelope sender (`MAIL FROM`): the sender's address.
    pub envelope_from: String,
    /// The recipient (`To`, and SMTP `RCPT TO`).
    pub envelope_to: String,
    /// The subject as sent (on one line).
    pub subject: String,
    /// The final HTML part (preheader and footer included), before encoding.
    pub html: String,
    /// The final text part (footer included), before encoding.
    pub text: String,
    /// The `Date` header, milliseconds since the Unix epoch.
    pub date_ms: i64,
    /// The `List-Unsubscribe` value (marketing email only).
    pub list_unsubscribe: Option<String>,
    /// Whether `List-Unsubscribe-Post: List-Unsubscribe=One-Click` is sent.
    pub list_unsubscribe_post: bool,
    /// The `multipart/alternative` boundary (derived from the key; in
    /// neither part).
    pub boundary: String,
}

/// Validates and assembles one email: everything [`compose`] does except
/// writing the MIME.
///
/// # Errors
///
/// A message naming the field at fault (e.g. `"to: not a valid address"`),
/// never the address or other contact data: invalid `to`, `from_address` or
/// `reply_to`, empty `subject` or `message_key`, a `date` outside 1970–9999,
/// an `unsubscribe_url` that is not https or an `unsubscribe_mailto` that is
/// not `mailto:` (for marketing email).
pub fn assemble(parts: &EmailParts<'_>) -> Result<Assembled, String> {
    if parts.message_key.is_empty() {
        return Err("message_key: empty".to_owned());
    }
    let to: Address = parts
        .to
        .trim()
        .parse()
        .map_err(|_| "to: not a valid address".to_owned())?;
    // In ASCII (an internationalized domain as punycode), as the headers
    // and the envelope: the Message-ID is built from its domain.
    let from_address: Address = ascii_domain(&parts.sender.from_address)
        .ok_or_else(|| "sender.from_address: not a valid address".to_owned())?;
    if let Some(r) = &parts.sender.reply_to
        && !r.trim().is_empty()
    {
        r.trim()
            .parse::<Address>()
            .map_err(|_| "sender.reply_to: not a valid address".to_owned())?;
    }
    let subject = single_line(parts.subject);
    if subject.trim().is_empty() {
        return Err("subject: empty".to_owned());
    }
    let date_ms = check_date(parts.date)?;
    let list_unsubscribe = if parts.marketing {
        list_unsubscribe_value(parts.unsubscribe_url, parts.unsubscribe_mailto)?
    } else {
        None
    };

    let message_id = format!(
        "<{}@{}>",
        message_id_local_part(parts.message_key),
        from_address.domain()
    );
    let html = assemble_html(parts.html_body, parts.preheader, parts.footer_html);
    let text = match parts.text_body {
        Some(text) => assemble_text(text, parts.footer_text),
        None => assemble_text(&html_to_text(parts.html_body), parts.footer_text),
    };
    let boundary = boundary_for(parts.message_key, &[&text, &html]);
    let (list_unsubscribe, list_unsubscribe_post) = match list_unsubscribe {
        Some((value, one_click)) => (Some(value), one_click),
        None => (None, false),
    };
    Ok(Assembled {
        message_id,
        from: parts.sender.clone(),
        envelope_from: from_address.to_string(),
        envelope_to: to.to_string(),
        subject,
        html,
        text,
        date_ms,
        list_unsubscribe,
        list_unsubscribe_post,
        boundary,
    })
}

impl Assembled {
    /// Writes the message out: `multipart/alternative` (text, then HTML),
    /// CRLF line endings, ready for SMTP `DATA`.
    ///
    /// # Errors
    ///
    /// A message naming the field at fault, as [`assemble`] gives: only
    /// possible when the parts did not come from [`assemble`] (an outbox
    /// payload edited by hand, say).
    pub fn rfc5322(&self) -> Result<Vec<u8>, String> {
        let address = |value: &str, field: &str| -> Result<Address, String> {
            ascii_domain(value).ok_or_else(|| format!("{field}: not a valid address"))
        };
        let from_address = address(&self.from.from_address, "sender.from_address")?;
        let to = address(&self.envelope_to, "to")?;
        let subject = single_line(&self.subject);
        if subject.trim().is_empty() {
            return Err("subject: empty".to_owned());
        }
        let date = UNIX_EPOCH + Duration::from_millis(u64::try_from(self.date_ms).unwrap_or(0));
        check_date(date)?;
        if self.boundary.is_empty() || !header_safe(&self.boundary) {
            return Err("boundary: not a valid MIME boundary".to_owned());
        }
        if let Some(value) = &self.list_unsubscribe
            && value.chars().any(char::is_control)
        {
            return Err("list_unsubscribe: not a valid header value".to_owned());
        }

        let from_name = single_line(&self.from.from_name);
        let from_name = from_name.trim();
        let from = Mailbox::new(
            (!from_name.is_empty()).then(|| from_name.to_owned()),
            from_address.clone(),
        );
        let mut builder = lettre::Message::builder().from(from);
        if let Some(r) = &self.from.reply_to
            && !r.trim().is_empty()
        {
            builder = builder.reply_to(Mailbox::new(None, address(r, "sender.reply_to")?));
        }
        // The envelope lettre would otherwise derive by parsing the From and
        // To headers back (it is not part of the formatted message).
        let envelope = Envelope::new(Some(from_address), vec![to.clone()])
            .map_err(|_| "message: could not be built".to_owned())?;
        builder = builder
            .envelope(envelope)
            .to(Mailbox::new(None, to))
            .subject(subject)
            .date(date)
            .message_id(Some(self.message_id.clone()));
        if let Some(value) = &self.list_unsubscribe {
            builder = builder.header(ListUnsubscribe(value.clone()));
            if self.list_unsubscribe_post {
                builder = builder.header(ListUnsubscribePost);
            }
        }
        let body = MultiPart::alternative()
            .boundary(self.boundary.clone())
            .singlepart(SinglePart::plain(self.text.clone()))
            .singlepart(SinglePart::html(self.html.clone()));
        let message = builder
            .multipart(body)
            .map_err(|_| "message: could not be built".to_owned())?;
        Ok(message.formatted())
    }
}

/// Composes one email: [`assemble`], then [`Assembled::rfc5322`].
///
/// # Errors
///
/// As [`assemble`].
pub fn compose(parts: &EmailParts<'_>) -> Result<ComposedEmail, String> {
    let assembled = assemble(parts)?;
    let rfc5322 = assembled.rfc5322()?;
    Ok(ComposedEmail {
        message_id: assembled.message_id,
        rfc5322,
        html: assembled.html,
        text: assembled.text,
        envelope_from: assembled.envelope_from,
        envelope_to: assembled.envelope_to,
    })
}

/// Replaces line breaks and other control characters by spaces.
fn single_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// lettre's date formatting only covers 1970 ..= 9999; the date in
/// milliseconds since the epoch.
fn check_date(date: SystemTime) -> Result<i64, String> {
    // 10000-01-01T00:00:00Z (253 402 300 800 s after the epoch).
    const YEAR_10000: Duration = Duration::from_hours(70_389_528);
    match date.duration_since(UNIX_EPOCH) {
        Ok(since) if since < YEAR_10000 => Ok(since.as_millis() as i64),
        _ => Err("date: out of range".to_owned()),
    }
}

/// Builds the `List-Unsubscribe` value; the flag says whether one-click
/// (`List-Unsubscribe-Post`) applies, i.e. an https URL is present.
fn list_unsubscribe_value(
    url: Option<&str>,
    mailto: Option<&str>,
) -> Result<Option<(String, bool)>, String> {
    let url = url.map(str::trim).filter(|u| !u.is_empty());
    let mailto = mailto.map(str::trim).filter(|m| !m.is_empty());
    let mut entries = Vec::new();
    if let Some(url) = url {
        if !url
            .get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
            || !header_safe(url)
        {
            return Err("unsubscribe_url: must be an https URL".to_owned());
        }
        entries.push(format!("<{url}>"));
    }
    if let Some(mailto) = mailto {
        if !mailto
            .get(..7)
            .is_some_and(|s| s.eq_ignore_ascii_case("mailto:"))
            || !header_safe(mailto)
        {
            return Err("unsubscribe_mailto: must be a mailto: URL".to_owned());
        }
        entries.push(format!("<{mailto}>"));
    }
    if entries.is_empty() {
        Ok(None)
    } else {
        Ok(Some((entries.join(", "), url.is_some())))
    }
}

/// Printable ASCII without space, angle brackets or quotes: safe between `<>`.
fn header_safe(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b'<' | b'>' | b'"'))
}

/// The key as an RFC 5322 `dot-atom-text`: `[A-Za-z0-9_+-]` kept, dots kept
/// where legal, every other byte written as `=XX`.
fn message_id_local_part(key: &str) -> String {
    let bytes = key.as_bytes();
    let mut out = String::with_capacity(key.len());
    for (i, &b) in bytes.iter().enumerate() {
        let dot_ok = b == b'.'
            && i > 0
            && i + 1 < bytes.len()
            && bytes[i - 1] != b'.'
            && bytes[i + 1] != b'.';
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'-') || dot_ok {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "={b:02X}");
        }
    }
    out
}

/// 64-bit FNV-1a: stable across builds and platforms.
fn fnv1a(data: &[u8], seed: u64) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for &b in data {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// A MIME boundary derived from the key that occurs in none of the bodies.
fn boundary_for(key: &str, bodies: &[&str]) -> String {
    let mut attempt = 0u64;
    loop {
        let boundary = format!(
            "crm-alt-{:016x}{:016x}",
            fnv1a(key.as_bytes(), attempt),
            fnv1a(key.as_bytes(), attempt ^ 0x5bd1_e995)
        );
        if bodies.iter().all(|b| !b.contains(&boundary)) {
            return boundary;
        }
        attempt += 1;
    }
}

/// Escapes text for HTML element content and attribute values.
fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// ASCII case-insensitive search. The rest of the needle is compared only
/// where its first byte matches (the needles here start with `<`).
fn find_ci(haystack: &str, needle: &str) -> Option<usize> {
    let h = haystack.as_bytes();
    let n = needle.as_bytes();
    let (first, rest) = n.split_first()?;
    if h.len() < n.len() {
        return None;
    }
    (0..=h.len() - n.len()).find(|&i| {
        h[i].eq_ignore_ascii_case(first) && h[i + 1..i + n.len()].eq_ignore_ascii_case(rest)
    })
}

/// ASCII case-insensitive search for the last occurrence.
fn rfind_ci(haystack: &str, needle: &str) -> Option<usize> {
    let h = haystack.as_bytes();
    let n = needle.as_bytes();
    if n.is_empty() || h.len() < n.len() {
        return None;
    }
    (0..=h.len() - n.len())
        .rev()
        .find(|&i| h[i..i + n.len()].eq_ignore_ascii_case(n))
}

/// Offset of a `<body …>` opening tag (not `<bodyfoo>`), if any.
fn body_open_tag(html: &str) -> Option<(usize, usize)> {
    let mut from = 0;
    while let Some(found) = find_ci(&html[from..], "<body") {
        let start = from + found;
        let after = html.as_bytes().get(start + 5).copied();
        if matches!(after, Some(b'>' | b' ' | b'\t' | b'\r' | b'\n' | b'/')) {
            let end = html[start..].find('>').map(|i| start + i + 1)?;
            return Some((start, end));
        }
        from = start + 5;
    }
    None
}

/// The final HTML: hidden preheader first, footer last.
fn assemble_html(body: &str, preheader: &str, footer: &str) -> String {
    let pre = if preheader.trim().is_empty() {
        String::new()
    } else {
        format!(
            "<div style=\"display:none;font-size:1px;line-height:1px;max-height:0;\
             max-width:0;opacity:0;overflow:hidden;mso-hide:all;\" aria-hidden=\"true\">{}</div>\n",
            escape_html(preheader.trim())
        )
    };
    let footer = if footer.trim().is_empty() {
        String::new()
    } else {
        format!("\n{footer}\n")
    };
    if let Some((_, open_end)) = body_open_tag(body) {
        let (head, rest) = body.split_at(open_end);
        let (content, tail) = match rfind_ci(rest, "</body") {
            Some(close) => rest.split_at(close),
            None => (rest, ""),
        };
        format!("{head}\n{pre}{content}{footer}{tail}")
    } else if find_ci(body, "<html").is_some() {
        format!("{pre}{body}{footer}")
    } else {
        format!(
            "<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             </head>\n<body>\n{pre}{body}{footer}</body>\n</html>\n"
        )
    }
}

/// The final text: body, blank line, footer.
fn assemble_text(body: &str, footer: &str) -> String {
    let body = body.trim_end();
    let footer = footer.trim();
    match (body.is_empty(), footer.is_empty()) {
        (_, true) => format!("{body}\n"),
        (true, false) => format!("{footer}\n"),
        (false, false) => format!("{body}\n\n{footer}\n"),
    }
}

/// Decodes the basic named and all numeric character references.
fn decode_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let decoded = rest
            .find(';')
            .filter(|&semi| semi <= 10)
            .and_then(|semi| decode_entity(&rest[1..semi]).map(|c| (c, semi + 1)));
        if let Some((c, len)) = decoded {
            out.push(c);
            rest = &rest[len..];
        } else {
            out.push('&');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    out
}

fn decode_entity(name: &str) -> Option<char> {
    if let Some(num) = name.strip_prefix('#') {
        let code = match num.strip_prefix(['x', 'X']) {
            Some(hex) => u32::from_str_radix(hex, 16).ok()?,
            None => num.parse().ok()?,
        };
        return char::from_u32(code).filter(|c| !c.is_control() || c.is_whitespace());
    }
    Some(match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "nbsp" => ' ',
        "copy" => '©',
        "reg" => '®',
        "trade" => '™',
        "ndash" => '–',
        "mdash" => '—',
        "hellip" => '…',
        "lsquo" => '‘',
        "rsquo" => '’',
        "ldquo" => '“',
        "rdquo" => '”',
        "laquo" => '«',
        "raquo" => '»',
        "euro" => '€',
        "middot" => '·',
        "bull" => '•',
        _ => return None,
    })
}

/// Elements whose content is not text.
const SKIPPED: &[&str] = &["head", "script", "style", "title", "template", "noscript"];

/// Elements that break lines.
const BLOCKS: &[&str] = &[
    "address",
    "article",
    "aside",
    "blockquote",
    "center",
    "div",
    "dl",
    "dd",
    "dt",
    "footer",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "header",
    "hr",
    "main",
    "nav",
    "ol",
    "p",
    "pre",
    "section",
    "table",
    "tr",
    "ul",
];

/// Plain text from HTML: tags stripped, entities decoded, whitespace
/// collapsed, block elements on their own lines, list items as `- `, and
/// links as `text (url)`.
fn html_to_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len() / 2);
    // Open links: href and where their text starts in `out`.
    let mut links: Vec<(String, usize)> = Vec::new();
    let mut rest = html;
    while !rest.is_empty() {
        let Some(lt) = rest.find('<') else {
            push_text(&mut out, rest);
            break;
        };
        push_text(&mut out, &rest[..lt]);
        rest = &rest[lt..];
        if let Some(comment) = rest.strip_prefix("<!--") {
            rest = comment.find("-->").map_or("", |end| &comment[end + 3..]);
            continue;
        }
        let Some(tag_len) = tag_length(rest) else {
            // A lone '<' is text.
            push_text(&mut out, "<");
            rest = &rest[1..];
            continue;
        };
        let tag = &rest[1..tag_len - 1];
        rest = &rest[tag_len..];
        let closing = tag.starts_with('/');
        let tag_body = tag.trim_start_matches('/');
        let name_len = tag_body
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(tag_body.len());
        let name = tag_body[..name_len].to_ascii_lowercase();
        if name.is_empty() {
            continue; // <!DOCTYPE …>, <?xml …?>
        }
        if !closing && SKIPPED.contains(&name.as_str()) {
            let close = format!("</{name}");
            rest = find_ci(rest, &close).map_or("", |i| {
                let after = &rest[i..];
                after.find('>').map_or("", |j| &after[j + 1..])
            });
            continue;
        }
        match name.as_str() {
            "br" => out.push('\n'),
            "li" if !closing => {
                newline(&mut out);
                out.push_str("- ");
            }
            "td" | "th" if closing => out.push(' '),
            "a" if !closing => {
                let href = attribute(tag_body, "href").unwrap_or_default();
                links.push((href, out.len()));
            }
            "a" => {
                if let Some((href, start)) = links.pop() {
                    let shown = out[start.min(out.len())..].trim().to_owned();
                    let href = href.trim();
                    let target = href.strip_prefix("mailto:").unwrap_or(href);
                    if !href.is_empty()
                        && !href.starts_with('#')
                        && shown != href
                        && shown != target
                    {
                        if shown.is_empty() {
                            out.push_str(target);
                        } else {
                            let _ = write!(out, " ({target})");
                        }
                    }
                }
            }
            "img" if !closing => {
                if let Some(alt) = attribute(tag_body, "alt").filter(|a| !a.trim().is_empty()) {
                    push_text(&mut out, &alt);
                }
            }
            n if BLOCKS.contains(&n) => {
                newline(&mut out);
                if matches!(
                    n,
                    "p" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" | "table" | "hr"
                ) {
                    out.push('\n');
                }
            }
            _ => {}
        }
    }
    tidy_lines(&out)
}

/// Length of the tag at the start of `s` (`<…>`, quotes respected), or `None`
/// when `s` does not start a tag.
fn tag_length(s: &str) -> Option<usize> {
    let second = s[1..].chars().next()?;
    if !(second.is_ascii_alphabetic() || matches!(second, '/' | '!' | '?')) {
        return None;
    }
    let mut quote: Option<char> = None;
    for (i, c) in s.char_indices().skip(1) {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (None, '"' | '\'') => quote = Some(c),
            (None, '>') => return Some(i + 1),
            _ => {}
        }
    }
    None
}

/// The decoded value of an attribute in a tag's text.
fn attribute(tag: &str, name: &str) -> Option<String> {
    let mut from = 0;
    while let Some(found) = find_ci(&tag[from..], name) {
        let start = from + found;
        from = start + name.len();
        let before_ok = tag[..start]
            .chars()
            .next_back()
            .is_some_and(char::is_whitespace);
        let after = tag[from..].trim_start();
        let Some(value) = after.strip_prefix('=').map(str::trim_start) else {
            continue;
        };
        if !before_ok {
            continue;
        }
        let raw = match value.chars().next() {
            Some(q @ ('"' | '\'')) => value[1..].split(q).next().unwrap_or_default(),
            _ => value
                .split(|c: char| c.is_whitespace() || c == '>')
                .next()
                .unwrap_or_default(),
        };
        return Some(decode_entities(raw));
    }
    None
}

/// Appends a text node: entities decoded, whitespace collapsed.
fn push_text(out: &mut String, raw: &str) {
    let decoded = decode_entities(raw);
    for c in decoded.chars() {
        if c.is_whitespace() && c != '\u{a0}' {
            if !out.ends_with([' ', '\n']) && !out.is_empty() {
                out.push(' ');
            }
        } else {
            out.push(c);
        }
    }
}

fn newline(out: &mut String) {
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
}

/// Trims every line and keeps at most one blank line in a row.
fn tidy_lines(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut blank = 0;
    for line in s.lines().map(str::trim) {
        if line.is_empty() {
            blank += 1;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank > 0 { "\n\n" } else { "\n" });
        }
        blank = 0;
        out.push_str(line);
    }
    out
}

/// `text` as an address whose domain is ASCII (an internationalized
/// domain as punycode, `bücher.example` → `xn--bcher-kva.example`), the
/// form every relay and mail client takes in headers and envelopes; `None`
/// when it is no address. A mailbox name outside ASCII stays as it is (only
/// SMTPUTF8 carries it).
pub(crate) fn ascii_domain(text: &str) -> Option<Address> {
    let address = text.trim().parse::<Address>().ok()?;
    if address.domain().is_ascii() {
        return Some(address);
    }
    let domain = idna::domain_to_ascii(address.domain()).ok()?;
    Address::new(address.user(), domain).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender() -> SenderIdentity {
        SenderIdentity {
            from_name: "Praxis Dr. Müller".to_owned(),
            from_address: "news@praxis-mueller.de".to_owned(),
            reply_to: Some("team@praxis-mueller.de".to_owned()),
        }
    }

    fn parts<'a>(sender: &'a SenderIdentity, marketing: bool) -> EmailParts<'a> {
        EmailParts {
            message_key: "out_42:step-3",
            to: "ann.patient@example.org",
            sender,
            subject: "Ihr Termin bei uns – wir freuen uns!",
            preheader: "Nur noch 3 Tage <bis> zum Termin",
            html_body: "<h1>Hallo Ann</h1><p>Bitte <a href=\"https://praxis-mueller.de/termin?a=1&amp;b=2\">bestätigen</a> Sie.</p>\
                        <ul><li>Eins</li><li>Zwei &amp; drei</li></ul>",
            text_body: None,
            footer_html: "<p class=\"footer\">Praxis Dr. Müller, Hauptstr. 1, 10115 Berlin – \
                          <a href=\"https://crm.example/u/tok\">Abmelden</a></p>",
            footer_text: "Praxis Dr. Müller, Hauptstr. 1, 10115 Berlin\nAbmelden: https://crm.example/u/tok",
            unsubscribe_url: Some("https://crm.example/u/tok"),
            unsubscribe_mailto: Some("mailto:unsubscribe@crm.example?subject=tok"),
            marketing,
            date: UNIX_EPOCH + Duration::from_secs(1_767_600_000),
        }
    }

    fn raw(email: &ComposedEmail) -> String {
        String::from_utf8(email.rfc5322.clone()).unwrap()
    }

    fn header_block(raw: &str) -> &str {
        raw.split("\r\n\r\n").next().unwrap()
    }

    #[test]
    fn marketing_email_has_all_headers_and_parts() {
        let s = sender();
        let email = compose(&parts(&s, true)).unwrap();
        let raw = raw(&email);
        let headers = header_block(&raw);

        assert_eq!(email.message_id, "<out_42=3Astep-3@praxis-mueller.de>");
        assert!(
            headers.contains("\r\nMessage-ID: <out_42=3Astep-3@praxis-mueller.de>\r\n"),
            "{headers}"
        );
        assert!(headers.contains("From: =?utf-8?"), "{headers}");
        assert!(headers.contains("<news@praxis-mueller.de>"), "{headers}");
        assert!(
            headers.contains("\r\nReply-To: team@praxis-mueller.de\r\n"),
            "{headers}"
        );
        assert!(
            headers.contains("\r\nTo: ann.patient@example.org\r\n"),
            "{headers}"
        );
        assert!(
            headers.contains("\r\nDate: Mon, 05 Jan 2026 08:00:00 +0000\r\n"),
            "{headers}"
        );
        // non-ASCII subject is RFC 2047-encoded, no raw UTF-8 in headers
        assert!(
            headers
                .contains("\r\nSubject: Ihr Termin bei uns =?utf-8?b?4oCT?= wir freuen uns!\r\n"),
            "{headers}"
        );
        assert!(headers.is_ascii(), "{headers}");
        assert!(
            headers.contains("\r\nList-Unsubscribe: <https://crm.example/u/tok>,"),
            "{headers}"
        );
        assert!(
            headers.contains("<mailto:unsubscribe@crm.example?subject=tok>"),
            "{headers}"
        );
        assert!(
            headers.contains("\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"),
            "{headers}"
        );
        assert!(headers.contains("MIME-Version: 1.0"), "{headers}");
        assert!(
            headers.contains("Content-Type: multipart/alternative;"),
            "{headers}"
        );

        // text/plain first, then text/html, both UTF-8
        let plain = raw.find("Content-Type: text/plain; charset=utf-8").unwrap();
        let html = raw.find("Content-Type: text/html; charset=utf-8").unwrap();
        assert!(plain < html);
        assert_eq!(raw.matches("\r\n--crm-alt-").count(), 3, "{raw}");
        assert!(raw.is_ascii());

        // footer in both parts, preheader hidden in HTML only
        assert!(email.text.contains("Abmelden: https://crm.example/u/tok"));
        assert!(email.html.contains("<p class=\"footer\">"));
        assert!(email.html.contains("display:none"));
        assert!(
            email
                .html
                .contains("Nur noch 3 Tage &lt;bis&gt; zum Termin")
        );
        assert!(!email.text.contains("Nur noch"));
        let pre = email.html.find("Nur noch").unwrap();
        let body = email.html.find("Hallo Ann").unwrap();
        let foot = email.html.find("class=\"footer\"").unwrap();
        assert!(pre < body && body < foot);

        // derived text part
        assert_eq!(
            email.text,
            "Hallo Ann\n\nBitte bestätigen (https://praxis-mueller.de/termin?a=1&b=2) Sie.\n\n\
             - Eins\n- Zwei & drei\n\n\
             Praxis Dr. Müller, Hauptstr. 1, 10115 Berlin\nAbmelden: https://crm.example/u/tok\n"
        );
        assert_eq!(email.envelope_from, "news@praxis-mueller.de");
        assert_eq!(email.envelope_to, "ann.patient@example.org");
    }

    #[test]
    fn care_email_has_no_list_unsubscribe() {
        let s = sender();
        let email = compose(&parts(&s, false)).unwrap();
        let raw = raw(&email);
        assert!(!raw.contains("List-Unsubscribe"));
        assert!(email.text.contains("Abmelden"));
        assert!(email.html.contains("class=\"footer\""));
    }

    #[test]
    fn mailto_only_has_no_one_click() {
        let s = sender();
        let mut p = parts(&s, true);
        p.unsubscribe_url = None;
        let raw = raw(&compose(&p).unwrap());
        assert!(raw.contains("List-Unsubscribe: <mailto:unsubscribe@crm.example?subject=tok>\r\n"));
        assert!(!raw.contains("List-Unsubscribe-Post"));
        p.unsubscribe_mailto = None;
        assert!(!raw_of(&p).contains("List-Unsubscribe"));
    }

    fn raw_of(p: &EmailParts<'_>) -> String {
        raw(&compose(p).unwrap())
    }

    #[test]
    fn composing_is_deterministic() {
        let s = sender();
        let p = parts(&s, true);
        let a = compose(&p).unwrap();
        let b = compose(&p).unwrap();
        assert_eq!(a.rfc5322, b.rfc5322);
        assert_eq!(a, b);
        // another key gives another Message-ID and boundary
        let mut q = p;
        q.message_key = "out_43";
        let c = compose(&q).unwrap();
        assert_ne!(a.message_id, c.message_id);
        let boundary = |raw: &str| {
            raw.split("boundary=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
                .to_owned()
        };
        assert_ne!(boundary(&raw(&a)), boundary(&raw(&c)));
    }

    #[test]
    fn assembled_parts_write_out_the_same_message_after_a_round_trip_through_json() {
        let s = sender();
        for marketing in [true, false] {
            let p = parts(&s, marketing);
            let assembled = assemble(&p).unwrap();
            // What the outbox stores, read back by the dispatcher.
            let stored = serde_json::to_string(&assembled).unwrap();
            let back: Assembled = serde_json::from_str(&stored).unwrap();
            assert_eq!(back, assembled);
            assert_eq!(back.rfc5322().unwrap(), compose(&p).unwrap().rfc5322);
            assert_eq!(back.rfc5322().unwrap(), back.rfc5322().unwrap());
        }
        // A stored payload altered by hand is refused, naming the field only.
        let mut bad = assemble(&parts(&s, true)).unwrap();
        bad.envelope_to = "not an address".to_owned();
        assert_eq!(bad.rfc5322().unwrap_err(), "to: not a valid address");
        let mut bad = assemble(&parts(&s, true)).unwrap();
        bad.boundary = "a\r\nBcc: x@y.z".to_owned();
        assert_eq!(
            bad.rfc5322().unwrap_err(),
            "boundary: not a valid MIME boundary"
        );
    }

    #[test]
    fn explicit_text_body_and_full_html_document() {
        let s = sender();
        let mut p = parts(&s, true);
        p.text_body = Some("Hallo Ann,\nbis bald.");
        p.html_body = "<!DOCTYPE html><html><head><title>T</title></head><BODY class=\"x\"><p>Hallo</p></BODY></html>";
        let email = compose(&p).unwrap();
        assert!(
            email
                .text
                .starts_with("Hallo Ann,\nbis bald.\n\nPraxis Dr. Müller")
        );
        assert!(email.html.starts_with("<!DOCTYPE html><html><head><title>T</title></head><BODY class=\"x\">\n<div style=\"display:none"));
        assert!(
            email.html.ends_with("Abmelden</a></p>\n</BODY></html>"),
            "{}",
            email.html
        );
        assert_eq!(
            email.html.matches("<body").count() + email.html.matches("<BODY").count(),
            1
        );
    }

    #[test]
    fn body_containing_the_boundary_gets_another_one() {
        let s = sender();
        let mut p = parts(&s, true);
        let first = boundary_for(p.message_key, &[]);
        let body = format!("<p>{first}</p>");
        p.html_body = &body;
        let raw = raw_of(&p);
        assert!(!raw.contains(&format!("boundary=\"{first}\"")));
        assert_eq!(raw.matches("--crm-alt-").count(), 3);
    }

    #[test]
    fn errors_name_the_field_never_the_value() {
        let s = sender();
        let mut p = parts(&s, true);
        p.to = "not an address <ann@example.org>";
        assert_eq!(compose(&p).unwrap_err(), "to: not a valid address");
        p.to = "ann@example.org";
        p.unsubscribe_url = Some("http://crm.example/u/tok");
        assert_eq!(
            compose(&p).unwrap_err(),
            "unsubscribe_url: must be an https URL"
        );
        p.unsubscribe_url = Some("https://crm.example/u/tok>\r\nBcc: x@y");
        assert_eq!(
            compose(&p).unwrap_err(),
            "unsubscribe_url: must be an https URL"
        );
        p.unsubscribe_url = None;
        p.unsubscribe_mailto = Some("unsubscribe@crm.example");
        assert_eq!(
            compose(&p).unwrap_err(),
            "unsubscribe_mailto: must be a mailto: URL"
        );
        p.unsubscribe_mailto = None;
        p.date = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(compose(&p).unwrap_err(), "date: out of range");
        p.date = UNIX_EPOCH;
        p.subject = " \r\n";
        assert_eq!(compose(&p).unwrap_err(), "subject: empty");
        p.subject = "Hi";
        p.message_key = "";
        assert_eq!(compose(&p).unwrap_err(), "message_key: empty");
        p.message_key = "k";
        let bad_from = SenderIdentity {
            from_address: "praxis".to_owned(),
            ..sender()
        };
        p.sender = &bad_from;
        assert_eq!(
            compose(&p).unwrap_err(),
            "sender.from_address: not a valid address"
        );
        let bad_reply = SenderIdentity {
            reply_to: Some("nope@".to_owned()),
            ..sender()
        };
        p.sender = &bad_reply;
        assert_eq!(
            compose(&p).unwrap_err(),
            "sender.reply_to: not a valid address"
        );
    }

    #[test]
    fn header_injection_is_neutralised() {
        let s = SenderIdentity {
            from_name: "Praxis\r\nBcc: evil@example.org".to_owned(),
            ..sender()
        };
        let mut p = parts(&s, false);
        p.subject = "Hello\r\nBcc: evil@example.org";
        let raw = raw_of(&p);
        let headers = header_block(&raw);
        assert!(!headers.contains("\r\nBcc:"), "{headers}");
        assert!(
            headers.contains("Subject: Hello  Bcc: evil@example.org\r\n"),
            "{headers}"
        );
    }

    #[test]
    fn message_id_local_part_is_dot_atom() {
        assert_eq!(message_id_local_part("abc.def"), "abc.def");
        assert_eq!(message_id_local_part(".a..b."), "=2Ea=2E=2Eb=2E");
        assert_eq!(message_id_local_part("a b=c/ü"), "a=20b=3Dc=2F=C3=BC");
    }

    #[test]
    fn html_to_text_handles_common_markup() {
        let html = "<html><head><style>p{color:red}</style></head><body>\
                    <p>Hi&nbsp;there,&#33; &#x263A;</p>\
                    <!-- hidden -->\
                    <table><tr><td>A</td><td>B</td></tr></table>\
                    Line<br>break <a href='https://x.example'>https://x.example</a> \
                    <a href=\"mailto:team@x.example\">team@x.example</a> \
                    <img src=\"logo.png\" alt=\"Logo\"> 1 < 2\
                    <script>alert(1)</script></body></html>";
        assert_eq!(
            html_to_text(html),
            "Hi there,! ☺\n\nA B\n\nLine\nbreak https://x.example team@x.example Logo 1 < 2"
        );
    }
}
