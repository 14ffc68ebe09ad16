//! Open, click and unsubscribe tracking: signed tokens, link wrapping and
//! the answer the host's web tier gives to a tracking hit.
//!
//! # What a token carries
//!
//! A tracking token names **only** an opaque message number, a link index
//! and when it was issued. It never carries an email address, a name, a
//! phone number or a contact id: the web tier resolves the message number
//! against the engine's own store. The original link targets are returned
//! by [`wrap_html_links`] / [`wrap_text_links`] for the caller to store with
//! the message; they are never put into a URL, so the wrapped URL cannot
//! leak what the original link contained and cannot be turned into an open
//! redirect.
//!
//! The payload is authenticated, not encrypted: anyone holding a token can
//! read its message number, link index and issue time, but nobody without
//! the key can make or alter one.
//!
//! # Token format
//!
//! `t1.<payload>.<tag>`, both parts unpadded base64url:
//!
//! * `payload` — 23 bytes, little-endian: kind `u8` (0 open, 1 click,
//!   2 unsubscribe), key version `u32`, message number `i64`, link index
//!   `u16`, issue time in whole Unix seconds `i64`;
//! * `tag` — the first 16 bytes (128 bits) of HMAC-SHA256 over a fixed
//!   domain-separation label followed by the payload, keyed by the key of
//!   that version. The tag is compared in constant time and must be exactly
//!   16 bytes long (shorter tags are rejected, not compared as prefixes).
//!
//! A token is 57 characters long, which keeps wrapped links usable in SMS.
//!
//! # URLs
//!
//! Paths under the host-supplied tracking base URL: `{base}/o/{token}` for
//! the open pixel ([`open_url`]), `{base}/c/{token}` for clicks
//! ([`click_url`]) and `{base}/u/{token}` for unsubscribing
//! ([`unsubscribe_url`]).
//!
//! # Keys
//!
//! [`KeyRing`] holds versioned secrets: the newest signs, every key still in
//! the ring verifies, so rotating never breaks links already sent. Retire a
//! key only once every token it signed has expired — see
//! [`KeyRing::retire_older_than`].

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Milliseconds in one day.
const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// How long open and click tokens stay valid: 120 days, in milliseconds.
pub const ENGAGEMENT_VALIDITY_MS: i64 = 120 * DAY_MS;

/// How long unsubscribe tokens stay valid: 400 days, in milliseconds.
pub const UNSUBSCRIBE_VALIDITY_MS: i64 = 400 * DAY_MS;

/// The longest validity of any token kind (the unsubscribe one), in
/// milliseconds. `ring.retire_older_than(now_ms - MAX_VALIDITY_MS)` never
/// invalidates an unexpired token.
pub const MAX_VALIDITY_MS: i64 = UNSUBSCRIBE_VALIDITY_MS;

/// The placeholder message templates use for the unsubscribe link. Link
/// wrapping leaves it (and anything else still containing `{{`) untouched.
pub const UNSUBSCRIBE_PLACEHOLDER: &str = "{{unsubscribe_link}}";

/// An `<a>` attribute that opts one link out of click tracking
/// (`<a href="…" data-no-track>`), e.g. for links whose target must not see
/// a redirect.
pub const NO_TRACK_ATTRIBUTE: &str = "data-no-track";

/// Prefix of every token (format version 1).
const TOKEN_PREFIX: &str = "t1";
/// Bytes of the binary payload.
const PAYLOAD_LEN: usize = 1 + 4 + 8 + 2 + 8;
/// Bytes of the truncated HMAC tag.
const TAG_LEN: usize = 16;
/// Anything longer than this cannot be a token; rejected before decoding.
const MAX_TOKEN_LEN: usize = 96;
/// Label mixed into every MAC so these tags can never be confused with
/// HMACs the same secret might compute for another purpose or format.
const MAC_LABEL: &[u8] = b"crm-module/tracking/t1\0";
/// What [`KeyRing::sign`] returns when the ring has no key: well-formed
/// enough to put in a URL, never verifiable.
const UNSIGNABLE_TOKEN: &str = "t1..";

/// What a tracking token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// The open pixel of an email.
    Open,
    /// A wrapped link in an email or SMS.
    Click,
    /// The unsubscribe link of an email.
    Unsubscribe,
}

impl TokenKind {
    fn to_byte(self) -> u8 {
        match self {
            TokenKind::Open => 0,
            TokenKind::Click => 1,
            TokenKind::Unsubscribe => 2,
        }
    }

    fn from_byte(b: u8) -> Option<TokenKind> {
        match b {
            0 => Some(TokenKind::Open),
            1 => Some(TokenKind::Click),
            2 => Some(TokenKind::Unsubscribe),
            _ => None,
        }
    }
}

/// How long a token of `kind` stays valid after it was issued, in
/// milliseconds.
///
/// * [`TokenKind::Open`] and [`TokenKind::Click`]: 120 days
///   ([`ENGAGEMENT_VALIDITY_MS`]). Engagement that late says little about
///   the campaign; an expired click token still redirects (see
///   [`answer_click`]) but is no longer counted.
/// * [`TokenKind::Unsubscribe`]: 400 days ([`UNSUBSCRIBE_VALIDITY_MS`]),
///   well beyond the 30 days regulations expect an unsubscribe link to keep
///   working. When one has expired the web tier must still offer another
///   way to opt out (e.g. entering the address, replying STOP) rather than
///   a dead end.
pub fn validity(kind: TokenKind) -> i64 {
    match kind {
        TokenKind::Open | TokenKind::Click => ENGAGEMENT_VALIDITY_MS,
        TokenKind::Unsubscribe => UNSUBSCRIBE_VALIDITY_MS,
    }
}

/// One signing key of the ring.
///
/// The secret is serialized as a standard (padded) base64 string and is
/// never printed by `Debug`.
#[derive(Clone, Serialize, Deserialize)]
pub struct SigningKey {
    /// Key version, written into every token it signs.
    pub version: u32,
    /// The 32-byte HMAC-SHA256 secret.
    #[serde(with = "secret_base64")]
    pub secret: [u8; 32],
    /// When the key was created (Unix milliseconds).
    pub created_at_ms: i64,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("version", &self.version)
            .field("secret", &"<redacted>")
            .field("created_at_ms", &self.created_at_ms)
            .finish()
    }
}

/// Serializes the secret as base64 text.
mod secret_base64 {
    use base64::Engine as _;
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(secret: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::STANDARD.encode(secret))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        let bytes = super::STANDARD
            .decode(text.trim())
            .map_err(|_| D::Error::custom("secret: not valid base64"))?;
        <[u8; 32]>::try_from(bytes.as_slice())
            .map_err(|_| D::Error::custom("secret: must be exactly 32 bytes"))
    }
}

/// Versioned HMAC-SHA256 key ring: the newest key (highest version) signs;
/// every key still in the ring verifies, so rotation keeps old tokens valid.
///
/// Deserializing rejects a ring without keys or with duplicate versions
/// (see [`KeyRing::validate`]). `Debug` never prints secrets.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "KeyRingRepr")]
pub struct KeyRing {
    /// The keys, in any order; versions are unique.
    pub keys: Vec<SigningKey>,
}

/// Unvalidated wire form of [`KeyRing`].
#[derive(Deserialize)]
struct KeyRingRepr {
    keys: Vec<SigningKey>,
}

impl TryFrom<KeyRingRepr> for KeyRing {
    type Error = String;

    fn try_from(repr: KeyRingRepr) -> Result<KeyRing, String> {
        let ring = KeyRing { keys: repr.keys };
        ring.validate()?;
        Ok(ring)
    }
}

/// A fresh 32-byte secret from the operating system's generator.
fn fresh_secret() -> Result<[u8; 32], String> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret)
        .map_err(|e| format!("could not generate a tracking signing key: {e}"))?;
    Ok(secret)
}

impl KeyRing {
    /// A new ring with one fresh random key, version 1, created at `now_ms`.
    ///
    /// # Errors
    /// When the operating system's random generator fails.
    pub fn generate(now_ms: i64) -> Result<KeyRing, String> {
        Ok(KeyRing {
            keys: vec![SigningKey {
                version: 1,
                secret: fresh_secret()?,
                created_at_ms: now_ms,
            }],
        })
    }

    /// Adds a fresh random key one version above the newest and returns its
    /// version; it signs from now on. Older keys stay and keep verifying.
    ///
    /// # Errors
    /// When the random generator fails or versions are exhausted
    /// (`u32::MAX`); the ring is unchanged then.
    pub fn rotate(&mut self, now_ms: i64) -> Result<u32, String> {
        let version = match self.newest() {
            Some(k) => k
                .version
                .checked_add(1)
                .ok_or_else(|| String::from("tracking key versions are exhausted"))?,
            None => 1,
        };
        let secret = fresh_secret()?;
        self.keys.push(SigningKey {
            version,
            secret,
            created_at_ms: now_ms,
        });
        Ok(version)
    }

    /// Removes keys that stopped signing before `cutoff_ms`: a key is
    /// retired when a newer key (higher version) was created before the
    /// cutoff. The newest key is never removed.
    ///
    /// Because only the newest key signs, every token a key signed was
    /// issued before its successor was created. So
    /// `retire_older_than(now_ms - MAX_VALIDITY_MS)` only removes keys whose
    /// tokens have all expired; a later cutoff may break links that are
    /// still valid (their tokens then fail with [`TokenError::UnknownKey`]).
    pub fn retire_older_than(&mut self, cutoff_ms: i64) {
        let newest = self.newest().map(|k| k.version);
        let retired: Vec<u32> = self
            .keys
            .iter()
            .filter(|k| Some(k.version) != newest)
            .filter(|k| {
                self.keys
                    .iter()
                    .filter(|n| n.version > k.version)
                    .any(|n| n.created_at_ms < cutoff_ms)
            })
            .map(|k| k.version)
            .collect();
        self.keys.retain(|k| !retired.contains(&k.version));
    }

    /// Checks that the ring can sign and verify unambiguously: at least one
    /// key, no two keys with the same version.
    ///
    /// # Errors
    /// A message saying which rule is broken (never a secret).
    pub fn validate(&self) -> Result<(), String> {
        if self.keys.is_empty() {
            return Err("tracking key ring has no keys".into());
        }
        for (i, k) in self.keys.iter().enumerate() {
            if self.keys[..i].iter().any(|o| o.version == k.version) {
                return Err(format!(
                    "tracking key ring has two keys with version {}",
                    k.version
                ));
            }
        }
        Ok(())
    }

    /// The key that signs: the one with the highest version.
    pub fn newest(&self) -> Option<&SigningKey> {
        self.keys.iter().max_by_key(|k| k.version)
    }

    /// A URL-safe token (`[A-Za-z0-9_.-]`, 57 characters) for `kind`,
    /// message number `message_id` and link index `link` (use 0 for opens
    /// and unsubscribes), issued at `issued_ms` (kept to the whole second,
    /// rounded down), signed with the newest key.
    ///
    /// A ring without keys cannot sign: it returns a placeholder token that
    /// never verifies ([`TokenError::Malformed`]) rather than panicking.
    /// Deserialized rings always have a key; call [`KeyRing::validate`]
    /// on hand-built ones.
    ///
    /// This sets the HMAC key up for the one token; to sign several, take a
    /// [`KeyRing::signer`] once.
    pub fn sign(&self, kind: TokenKind, message_id: i64, link: u16, issued_ms: i64) -> String {
        self.signer().sign(kind, message_id, link, issued_ms)
    }

    /// The newest key with its HMAC key schedule computed once: signing
    /// with it gives the same tokens as [`KeyRing::sign`] at the cost of a
    /// copy of the keyed state per token instead of a key setup (two SHA-256
    /// blocks). It does not follow later changes to the ring.
    pub fn signer(&self) -> Signer {
        Signer {
            keyed: self
                .newest()
                .and_then(|k| keyed_mac(&k.secret).map(|mac| (k.version, mac))),
        }
    }

    /// Checks a token's format, key and signature — but not its age — and
    /// returns what it claims.
    ///
    /// Use this only where an expired but authentic token still deserves an
    /// answer (a click redirect, an unsubscribe page); use
    /// [`KeyRing::verify`] to decide whether to count or act on a hit.
    ///
    /// # Errors
    /// [`TokenError::Malformed`] when it is not a `t1` token of the right
    /// size; [`TokenError::UnknownKey`] when its key version is not in the
    /// ring (never issued, or retired); [`TokenError::BadSignature`] when any
    /// bit of payload or tag was changed.
    pub fn authenticate(&self, token: &str) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(TOKEN_PREFIX), Some(payload_b64), Some(tag_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let payload = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| TokenError::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag_b64)
            .map_err(|_| TokenError::Malformed)?;
        if payload.len() != PAYLOAD_LEN || tag.len() != TAG_LEN {
            return Err(TokenError::Malformed);
        }
        let mut r = Reader(&payload);
        let kind_byte = r.take::<1>().ok_or(TokenError::Malformed)?[0];
        let version = u32::from_le_bytes(r.take().ok_or(TokenError::Malformed)?);
        let key = self
            .keys
            .iter()
            .find(|k| k.version == version)
            .ok_or(TokenError::UnknownKey)?;
        // Nothing else in the payload is trusted before the tag checks out.
        let mac = mac_over(&key.secret, &payload).ok_or(TokenError::BadSignature)?;
        mac.verify_truncated_left(&tag)
            .map_err(|_| TokenError::BadSignature)?;
        let kind = TokenKind::from_byte(kind_byte).ok_or(TokenError::Malformed)?;
        let message_id = i64::from_le_bytes(r.take().ok_or(TokenError::Malformed)?);
        let link = u16::from_le_bytes(r.take().ok_or(TokenError::Malformed)?);
        let issued_secs = i64::from_le_bytes(r.take().ok_or(TokenError::Malformed)?);
        Ok(Claims {
            kind,
            message_id,
            link,
            issued_ms: issued_secs.saturating_mul(1000),
            key_version: version,
        })
    }

    /// Checks a token completely — format, key, signature and age — and
    /// returns what it claims.
    ///
    /// A token is valid while `now_ms < issued_ms + validity(kind)` and
    /// [`TokenError::Expired`] from that instant on. The kind is signed, so
    /// it cannot be swapped to gain a longer validity; callers must still
    /// check that it is the kind they expect — or use
    /// [`KeyRing::verify_kind`].
    ///
    /// # Errors
    /// As [`KeyRing::authenticate`], plus [`TokenError::Expired`]. Age is
    /// only looked at once the signature is good.
    pub fn verify(&self, token: &str, now_ms: i64) -> Result<Claims, TokenError> {
        let claims = self.authenticate(token)?;
        if now_ms >= claims.expires_ms() {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }

    /// [`KeyRing::verify`], and the token must be for `expected`: a click or
    /// open token can never unsubscribe anyone, and vice versa.
    ///
    /// # Errors
    /// As [`KeyRing::verify`], plus [`TokenError::WrongKind`].
    pub fn verify_kind(
        &self,
        token: &str,
        expected: TokenKind,
        now_ms: i64,
    ) -> Result<Claims, TokenError> {
        let claims = self.verify(token, now_ms)?;
        if claims.kind != expected {
            return Err(TokenError::WrongKind);
        }
        Ok(claims)
    }
}

/// The MAC state keyed with `secret`, the label absorbed.
fn keyed_mac(secret: &[u8; 32]) -> Option<HmacSha256> {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(secret).ok()?;
    mac.update(MAC_LABEL);
    Some(mac)
}

/// The MAC state after absorbing the label and `payload`.
fn mac_over(secret: &[u8; 32], payload: &[u8]) -> Option<HmacSha256> {
    let mut mac = keyed_mac(secret)?;
    mac.update(payload);
    Some(mac)
}

/// Signs tokens with one key whose HMAC state was keyed once (see
/// [`KeyRing::signer`]). `Debug` never prints the keyed state.
#[derive(Clone)]
pub struct Signer {
    /// The key's version and its keyed MAC state; `None` for a ring
    /// without keys.
    keyed: Option<(u32, HmacSha256)>,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("version", &self.keyed.as_ref().map(|(v, _)| *v))
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// The token [`KeyRing::sign`] gives for the same arguments.
    pub fn sign(&self, kind: TokenKind, message_id: i64, link: u16, issued_ms: i64) -> String {
        let Some((version, keyed)) = &self.keyed else {
            return UNSIGNABLE_TOKEN.into();
        };
        let mut payload = [0u8; PAYLOAD_LEN];
        payload[0] = kind.to_byte();
        payload[1..5].copy_from_slice(&version.to_le_bytes());
        payload[5..13].copy_from_slice(&message_id.to_le_bytes());
        payload[13..15].copy_from_slice(&link.to_le_bytes());
        payload[15..23].copy_from_slice(&issued_ms.div_euclid(1000).to_le_bytes());
        let mut mac = keyed.clone();
        mac.update(&payload);
        let tag = mac.finalize().into_bytes();
        let tag = tag.get(..TAG_LEN).unwrap_or_default();
        format!(
            "{TOKEN_PREFIX}.{}.{}",
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }
}

/// Reads fixed-size little-endian fields without panicking.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_at_checked(N)?;
        self.0 = rest;
        head.try_into().ok()
    }
}

/// What a verified token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Claims {
    /// What the token is for.
    pub kind: TokenKind,
    /// The opaque message number it was issued for.
    pub message_id: i64,
    /// The link index (0 for opens and unsubscribes).
    pub link: u16,
    /// When it was issued (Unix milliseconds, whole seconds).
    pub issued_ms: i64,
    /// The version of the key that signed it.
    pub key_version: u32,
}

impl Claims {
    /// When the token stops being valid (Unix milliseconds, exclusive).
    pub fn expires_ms(&self) -> i64 {
        self.issued_ms.saturating_add(validity(self.kind))
    }
}

/// Why a token was refused. The messages never repeat the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TokenError {
    /// Not a token of this format (wrong prefix, size or encoding).
    Malformed,
    /// Signed with a key version the ring does not hold (never issued, or
    /// retired).
    UnknownKey,
    /// The signature does not match: forged or altered.
    BadSignature,
    /// Authentic but past its validity.
    Expired,
    /// Authentic and current, but for another purpose than the one asked
    /// for (from [`KeyRing::verify_kind`] only).
    WrongKind,
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenError::Malformed => "malformed tracking token",
            TokenError::UnknownKey => "tracking token signed with an unknown key",
            TokenError::BadSignature => "tracking token signature does not match",
            TokenError::Expired => "tracking token has expired",
            TokenError::WrongKind => "tracking token is for a different purpose",
        })
    }
}

impl std::error::Error for TokenError {}

// ---------------------------------------------------------------------------
// URLs and link wrapping
// ---------------------------------------------------------------------------

/// The base URL without trailing slashes.
fn trim_base(base_url: &str) -> &str {
    base_url.trim().trim_end_matches('/')
}

/// The open pixel URL: `{base}/o/{token}`.
pub fn open_url(base_url: &str, token: &str) -> String {
    format!("{}/o/{token}", trim_base(base_url))
}

/// A token as long as a signed one that verifies as nothing: what a
/// preview puts in the links it wraps, to measure a text as it is sent
/// without handing out a working link.
pub fn sample_token() -> String {
    let b64 = |bytes: usize| (bytes * 4).div_ceil(3);
    format!(
        "{TOKEN_PREFIX}.{}.{}",
        "x".repeat(b64(PAYLOAD_LEN)),
        "x".repeat(b64(TAG_LEN))
    )
}

/// A wrapped link: `{base}/c/{token}`.
pub fn click_url(base_url: &str, token: &str) -> String {
    format!("{}/c/{token}", trim_base(base_url))
}

/// The unsubscribe URL: `{base}/u/{token}`, also suitable for the
/// `List-Unsubscribe` header with `List-Unsubscribe-Post:
/// List-Unsubscribe=One-Click` (RFC 8058).
///
/// The web tier should unsubscribe on a `POST` (one-click, or the button of
/// the page it shows), not on a bare `GET`: mail security scanners fetch
/// every link in a message, and a `GET` that unsubscribes would silently
/// opt patients out of their reminders.
pub fn unsubscribe_url(base_url: &str, token: &str) -> String {
    format!("{}/u/{token}", trim_base(base_url))
}

/// A link found in a message body, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Link {
    /// Position among the wrapped links of the body, from 0; the index the
    /// click token carries.
    pub index: u16,
    /// The original target (HTML character references decoded), to store
    /// with the message and redirect to.
    pub url: String,
}

/// Whether `url` is an absolute http(s) URL with something after `://`.
fn is_http_url(url: &str) -> bool {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        &url[8..]
    } else if lower.starts_with("http://") {
        &url[7..]
    } else {
        return false;
    };
    !rest.is_empty()
}

/// Whether a found http(s) target should be wrapped: not already one of our
/// tracking/unsubscribe URLs (`{base}/o/`, `/c/`, `/u/`) and not a template
/// with placeholders left. Other pages under the base are wrapped: a
/// practice may serve its tracking from its own site
/// (`https://riverside.example`), and its booking page there is a link
/// like any.
fn should_wrap(url: &str, base: &str) -> bool {
    let ours = !base.is_empty()
        && ["o", "c", "u"].iter().any(|kind| {
            let prefix = format!("{base}/{kind}/");
            url.get(..prefix.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(&prefix))
        });
    is_http_url(url) && !ours && !url.contains("{{") && !url.contains(UNSUBSCRIBE_PLACEHOLDER)
}

/// Escapes text for a double- or single-quoted HTML attribute value.
fn escape_attr(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            _ => out.push(c),
        }
    }
    out
}

/// Decodes the character references an `href` value commonly holds
/// (`&amp;`, `&quot;`, `&apos;`, `&lt;`, `&gt;`, `&#NN;`, `&#xHH;`); anything
/// else is kept as written.
fn decode_attr(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let decoded = rest.get(1..).and_then(|after| {
            let semi = after.find(';').filter(|&i| i <= 10)?;
            let name = &after[..semi];
            let c = match name {
                "amp" => '&',
                "quot" => '"',
                "apos" => '\'',
                "lt" => '<',
                "gt" => '>',
                _ => {
                    let num = name.strip_prefix('#')?;
                    let code = match num.strip_prefix(['x', 'X']) {
                        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                        None => num.parse::<u32>().ok()?,
                    };
                    char::from_u32(code)?
                }
            };
            Some((c, semi + 2))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// One attribute of a tag: lowercased name, and the value's byte span in
/// the document with its quote character (`None` when unquoted or absent).
struct Attr {
    name: String,
    value: Option<(usize, usize, Option<u8>)>,
}

/// Parses the attributes of the tag whose name ends at `pos`; returns them
/// and the index just past the closing `>`, or `None` when the tag is not
/// closed.
fn parse_attrs(html: &str, mut pos: usize) -> Option<(Vec<Attr>, usize)> {
    let b = html.as_bytes();
    let mut attrs = Vec::new();
    loop {
        while pos < b.len() && (b[pos].is_ascii_whitespace() || b[pos] == b'/') {
            pos += 1;
        }
        if *b.get(pos)? == b'>' {
            return Some((attrs, pos + 1));
        }
        let name_start = pos;
        while pos < b.len()
            && !b[pos].is_ascii_whitespace()
            && !matches!(b[pos], b'=' | b'>' | b'/')
        {
            pos += 1;
        }
        let name = html.get(name_start..pos)?.to_ascii_lowercase();
        let mut after = pos;
        while after < b.len() && b[after].is_ascii_whitespace() {
            after += 1;
        }
        if b.get(after) != Some(&b'=') {
            attrs.push(Attr { name, value: None });
            continue;
        }
        pos = after + 1;
        while pos < b.len() && b[pos].is_ascii_whitespace() {
            pos += 1;
        }
        match *b.get(pos)? {
            q @ (b'"' | b'\'') => {
                let start = pos + 1;
                let len = b.get(start..)?.iter().position(|&c| c == q)?;
                attrs.push(Attr {
                    name,
                    value: Some((start, start + len, Some(q))),
                });
                pos = start + len + 1;
            }
            _ => {
                let start = pos;
                while pos < b.len() && !b[pos].is_ascii_whitespace() && b[pos] != b'>' {
                    pos += 1;
                }
                attrs.push(Attr {
                    name,
                    value: Some((start, pos, None)),
                });
            }
        }
    }
}

/// Rewrites every http(s) link target in an HTML body to
/// `{base}/c/{token}`, returning the new body and the original targets
/// (index = position among the wrapped links). `sign` gives the token for a
/// link index (typically `|i| ring.sign(TokenKind::Click, msg, i, now)`).
///
/// Rules:
/// * only the first `href` of `<a>` tags, quoted with `"` or `'`, is looked
///   at (unquoted values, `<area>`, VML and CSS are left alone); tags inside
///   HTML comments (Outlook conditional comments) are treated like others;
/// * the target is decoded (`&amp;` → `&`) and trimmed; only absolute
///   `http://`/`https://` targets are wrapped — `mailto:`, `tel:`,
///   `#anchors`, relative links stay as they are;
/// * the module's own URLs under `base_url` (`/o/`, `/c/`, `/u/`: the
///   unsubscribe URL, the pixel),
///   targets still containing a `{{…}}` placeholder (such as
///   [`UNSUBSCRIBE_PLACEHOLDER`]), targets `admit` refuses and tags
///   carrying [`NO_TRACK_ATTRIBUTE`] are left untouched;
/// * after 65 536 links the rest stay unwrapped.
///
/// In a rendered message, `admit` is [`TemplateLinks::admits`] of
/// [`TemplateLinks::of_html`]: only links the template wrote are tracked,
/// so a URL a contact typed into a field (`<a href="{{website}}">`) never
/// becomes a signed redirect on the practice's tracking domain.
///
/// Wrap after placeholders were filled, so the stored targets are the real
/// ones. A tag left unclosed at the end of the body stops the scan; the rest
/// is copied as is.
pub fn wrap_html_links(
    html: &str,
    base_url: &str,
    admit: &dyn Fn(&str) -> bool,
    sign: &dyn Fn(u16) -> String,
) -> (String, Vec<Link>) {
    let base = trim_base(base_url);
    let b = html.as_bytes();
    let mut out = String::with_capacity(html.len() + 64);
    let mut links: Vec<Link> = Vec::new();
    let mut copied = 0;
    let mut pos = 0;
    while let Some(off) = html.get(pos..).and_then(|s| s.find('<')) {
        let lt = pos + off;
        let is_a = matches!(b.get(lt + 1), Some(b'a' | b'A'))
            && b.get(lt + 2).is_some_and(|c| c.is_ascii_whitespace());
        if !is_a {
            pos = lt + 1;
            continue;
        }
        let Some((attrs, end)) = parse_attrs(html, lt + 2) else {
            break;
        };
        pos = end;
        if attrs.iter().any(|a| a.name == NO_TRACK_ATTRIBUTE) {
            continue;
        }
        let Some((start, stop, Some(_))) = attrs
            .iter()
            .find(|a| a.name == "href")
            .and_then(|a| a.value)
        else {
            continue;
        };
        let target = decode_attr(&html[start..stop]);
        let target = target.trim();
        if !should_wrap(target, base) || !admit(target) {
            continue;
        }
        let Ok(index) = u16::try_from(links.len()) else {
            break;
        };
        out.push_str(&html[copied..start]);
        out.push_str(&escape_attr(&click_url(base, &sign(index))));
        copied = stop;
        links.push(Link {
            index,
            url: target.to_string(),
        });
    }
    out.push_str(&html[copied..]);
    (out, links)
}

/// Whether `c` ends a bare URL in text.
fn ends_url(c: char) -> bool {
    c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | '"' | '`')
}

/// Drops trailing punctuation that belongs to the sentence, not the URL:
/// `. , ; : ! ? ' *` always, and `)`, `]`, `}` when unbalanced within the
/// URL (so `https://en.wikipedia.org/wiki/Foo_(bar)` keeps its parenthesis).
fn trim_url_end(mut url: &str) -> &str {
    loop {
        let Some(last) = url.chars().next_back() else {
            return url;
        };
        let strip = match last {
            '.' | ',' | ';' | ':' | '!' | '?' | '\'' | '*' => true,
            ')' | ']' | '}' => {
                let open = match last {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                url.matches(open).count() < url.matches(last).count()
            }
            _ => false,
        };
        if !strip {
            return url;
        }
        url = &url[..url.len() - last.len_utf8()];
    }
}

/// Same as [`wrap_html_links`] for plain-text and SMS bodies: every bare
/// `http://`/`https://` URL (scheme case-insensitive, not glued to a
/// preceding letter or digit) is replaced by `{base}/c/{token}`.
///
/// A URL runs to the next whitespace, control character, `<`, `>`, `"` or
/// `` ` ``; trailing sentence punctuation (`.,;:!?'*` and unbalanced `)`,
/// `]`, `}`) is not part of it. URLs without a scheme (`example.com/book`)
/// are not recognized. The module's own URLs (`{base}/o/`, `/c/`, `/u/`), URLs still holding
/// a `{{…}}` placeholder and URLs `admit` refuses are left untouched; after
/// 65 536 links the rest stay unwrapped.
///
/// In a rendered message, `admit` is [`TemplateLinks::admits`]: only links
/// the template wrote are tracked, so a URL a contact typed into a field
/// (a first name such as "Claim https://…") never becomes a signed
/// redirect on the practice's tracking domain.
pub fn wrap_text_links(
    text: &str,
    base_url: &str,
    admit: &dyn Fn(&str) -> bool,
    sign: &dyn Fn(u16) -> String,
) -> (String, Vec<Link>) {
    wrap_text_links_from(text, base_url, admit, sign, 0)
}

/// [`wrap_text_links`], numbering the links from `first` (an email's text
/// part goes on from its HTML part's links). Links past index 65,535 are
/// left as written.
pub fn wrap_text_links_from(
    text: &str,
    base_url: &str,
    admit: &dyn Fn(&str) -> bool,
    sign: &dyn Fn(u16) -> String,
    first: u16,
) -> (String, Vec<Link>) {
    let base = trim_base(base_url);
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len() + 64);
    let mut links: Vec<Link> = Vec::new();
    let mut copied = 0;
    let mut pos = 0;
    while let Some(off) = lower.get(pos..).and_then(|s| s.find("http")) {
        let start = pos + off;
        pos = start + 4;
        let Some(after_scheme) = scheme_end(&lower, start) else {
            continue;
        };
        let glued = text[..start]
            .chars()
            .next_back()
            .is_some_and(char::is_alphanumeric);
        if glued {
            continue;
        }
        let end = url_end(text, after_scheme);
        let url = trim_url_end(&text[start..end]);
        pos = start + url.len().max(4);
        if !should_wrap(url, base) || !admit(url) {
            pos = end.max(pos);
            continue;
        }
        let Some(index) = u16::try_from(links.len())
            .ok()
            .and_then(|n| first.checked_add(n))
        else {
            break;
        };
        out.push_str(&text[copied..start]);
        out.push_str(&click_url(base, &sign(index)));
        copied = start + url.len();
        links.push(Link {
            index,
            url: url.to_string(),
        });
    }
    out.push_str(&text[copied..]);
    (out, links)
}

/// Where the `http://` or `https://` starting at `start` of `lower` (a text
/// in ASCII lowercase) ends, if one starts there.
fn scheme_end(lower: &str, start: usize) -> Option<usize> {
    let rest = &lower[start..];
    if rest.starts_with("https://") {
        Some(start + 8)
    } else if rest.starts_with("http://") {
        Some(start + 7)
    } else {
        None
    }
}

/// Where a URL of `text` whose scheme ends at `after_scheme` ends (at the
/// first character that cannot be in one), before trimming its trailing
/// punctuation.
fn url_end(text: &str, after_scheme: usize) -> usize {
    text[after_scheme..]
        .char_indices()
        .find(|&(_, c)| ends_url(c))
        .map_or(text.len(), |(i, _)| after_scheme + i)
}

/// The links a text template writes, to tell them from URLs that came in
/// with a placeholder's value (see [`wrap_text_links`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateLinks {
    /// Links written out in full (a set: a body may hold thousands, each
    /// looked up once per link of the rendered message).
    exact: std::collections::HashSet<String>,
    /// The fixed start of links that continue with a placeholder, each with
    /// its host complete (`https://portal.example/c?p=`).
    prefixes: Vec<String>,
}

/// Where the first template tag of a link starts: a placeholder (`{{`), a
/// statement (`{%`, as in `{% if %}`) or a comment (`{#`). What follows
/// it is written when the message is rendered.
fn template_tag(url: &str) -> Option<usize> {
    ["{{", "{%", "{#"].iter().filter_map(|t| url.find(t)).min()
}

impl TemplateLinks {
    /// Finds the `http://` and `https://` links of a template's source.
    pub fn of(template: &str) -> TemplateLinks {
        let mut found = TemplateLinks::default();
        let lower = template.to_ascii_lowercase();
        let mut pos = 0;
        while let Some(off) = lower.get(pos..).and_then(|s| s.find("http")) {
            let start = pos + off;
            pos = start + 4;
            let Some(after_scheme) = scheme_end(&lower, start) else {
                continue;
            };
            let end = url_end(template, after_scheme);
            let raw = &template[start..end];
            let url = trim_url_end(raw);
            pos = end.max(pos);
            match template_tag(url) {
                None => {
                    found.exact.insert(url.to_string());
                    // In an attribute the link runs to its quote: a final
                    // `.` or `)` there is the link's own.
                    if raw != url && template_tag(raw).is_none() {
                        found.exact.insert(raw.to_string());
                    }
                }
                // The host must be written out: `https://{{site}}/x` is the
                // contact's host, not the template's.
                Some(p) if template[after_scheme..start + p].contains(['/', '?', '#']) => {
                    found.prefixes.push(url[..p].to_string());
                }
                Some(_) => {}
            }
        }
        found
    }

    /// The links of an HTML template's source, its character references
    /// decoded (`&amp;` → `&`) as a link's target is before it is wrapped.
    pub fn of_html(template: &str) -> TemplateLinks {
        TemplateLinks::of(&decode_attr(template))
    }

    /// Whether a URL of the rendered message is one the template wrote.
    pub fn admits(&self, url: &str) -> bool {
        self.exact.contains(url) || self.prefixes.iter().any(|p| url.starts_with(p))
    }
}

/// The open pixel `<img>` tag to append to an HTML body (just before
/// `</body>` when there is one): 1×1, empty `alt`, `display:block` and no
/// border so it takes no visible space.
pub fn open_pixel_tag(base_url: &str, token: &str) -> String {
    format!(
        "<img src=\"{}\" width=\"1\" height=\"1\" alt=\"\" border=\"0\" \
         style=\"display:block;width:1px;height:1px;border:0;margin:0;padding:0;\
         overflow:hidden;\" />",
        escape_attr(&open_url(base_url, token))
    )
}

/// The 43-byte transparent 1×1 GIF the web tier returns for an open.
pub const PIXEL_GIF: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, // "GIF89a"
    0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, // 1x1, 2-colour global table
    0x00, 0x00, 0x00, 0xff, 0xff, 0xff, // black, white
    0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, // colour 0 transparent
    0x2c, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, // image 1x1
    0x02, 0x02, 0x44, 0x01, 0x00, // LZW data
    0x3b, // trailer
];

// ---------------------------------------------------------------------------
// The web tier's answer
// ---------------------------------------------------------------------------

/// `Cache-Control` for every tracking answer: each hit must reach the
/// server, and nothing may be stored by shared caches.
pub const NO_STORE: &str = "no-store, no-cache, must-revalidate, private, max-age=0";

/// What the host's web tier must answer to a tracking hit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct HitResponse {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type`, when there is a body.
    pub content_type: Option<String>,
    /// `Location`, for redirects.
    pub location: Option<String>,
    /// A binary body, standard base64 (the pixel).
    pub body_base64: Option<String>,
    /// A text body.
    pub body_text: Option<String>,
    /// `Cache-Control`; always [`NO_STORE`].
    pub cache_control: String,
}

impl HitResponse {
    /// `200 image/gif` with [`PIXEL_GIF`].
    pub fn pixel() -> HitResponse {
        HitResponse {
            status: 200,
            content_type: Some("image/gif".into()),
            location: None,
            body_base64: Some(STANDARD.encode(PIXEL_GIF)),
            body_text: None,
            cache_control: NO_STORE.into(),
        }
    }

    /// `302 Found` to `url`. Only absolute http(s) URLs are redirected to;
    /// anything else (`javascript:`, relative) gets [`HitResponse::not_found`].
    /// Spaces and control characters (including CR/LF) are percent-encoded,
    /// so the header cannot be split.
    pub fn redirect(url: &str) -> HitResponse {
        let url = url.trim();
        if !is_http_url(url) {
            return HitResponse::not_found();
        }
        let mut location = String::with_capacity(url.len());
        for c in url.chars() {
            if c == ' ' || c.is_control() {
                let mut buf = [0u8; 4];
                for byte in c.encode_utf8(&mut buf).bytes() {
                    location.push_str(&format!("%{byte:02X}"));
                }
            } else {
                location.push(c);
            }
        }
        HitResponse {
            status: 302,
            content_type: None,
            location: Some(location),
            body_base64: None,
            body_text: None,
            cache_control: NO_STORE.into(),
        }
    }

    /// `404` with a short text that says nothing about why.
    pub fn not_found() -> HitResponse {
        HitResponse {
            status: 404,
            content_type: Some("text/plain; charset=utf-8".into()),
            location: None,
            body_base64: None,
            body_text: Some("This link is not valid.".into()),
            cache_control: NO_STORE.into(),
        }
    }
}

/// Answers a hit on `{base}/o/{token}`: always the pixel (a broken image
/// would tell nothing useful to anyone and look bad to the patient), and
/// the claims only when the open should be recorded — the token verifies
/// and is an [`TokenKind::Open`] token. Classify the open with
/// [`classify_open`] before counting it as human.
pub fn answer_open(ring: &KeyRing, token: &str, now_ms: i64) -> (HitResponse, Option<Claims>) {
    let claims = ring.verify_kind(token, TokenKind::Open, now_ms).ok();
    (HitResponse::pixel(), claims)
}

/// Answers a hit on `{base}/c/{token}`. `resolve` maps (message number,
/// link index) to the stored original target.
///
/// An authentic [`TokenKind::Click`] token whose link resolves is
/// redirected to — even after expiry, so old messages keep working — but
/// the claims (meaning: record this click, after [`classify_click`]) are
/// only returned when the token is also unexpired. Anything else is a
/// `404`. The target always comes from the store, never from the request,
/// so this is no open redirect.
pub fn answer_click(
    ring: &KeyRing,
    token: &str,
    now_ms: i64,
    resolve: &dyn Fn(i64, u16) -> Option<String>,
) -> (HitResponse, Option<Claims>) {
    let Ok(claims) = ring.authenticate(token) else {
        return (HitResponse::not_found(), None);
    };
    if claims.kind != TokenKind::Click {
        return (HitResponse::not_found(), None);
    }
    let Some(url) = resolve(claims.message_id, claims.link) else {
        return (HitResponse::not_found(), None);
    };
    let response = HitResponse::redirect(&url);
    let count = response.status == 302 && now_ms < claims.expires_ms();
    (response, count.then_some(claims))
}

// ---------------------------------------------------------------------------
// Machine opens and clicks
// ---------------------------------------------------------------------------

/// How a tracking hit probably came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OpenClass {
    /// No sign of automation: count it.
    Human,
    /// A mail provider fetching images on the reader's behalf, whether or
    /// not anyone reads: Apple Mail Privacy Protection, Gmail's or Yahoo's
    /// image proxy.
    MachineProxy,
    /// A link or security scanner, link-preview fetcher or script.
    Scanner,
}

/// What the web tier knows about a hit; the same for opens and clicks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OpenContext {
    /// The request's `User-Agent`; `None` when the host does not pass it
    /// (no signal), `Some("")` when the request had none or an empty one.
    pub user_agent: Option<String>,
    /// Seconds between delivery and the hit, when known.
    pub seconds_since_delivery: Option<i64>,
    /// The host's classification of the client address: `"apple_mpp"`,
    /// `"google_proxy"`, `"yahoo_proxy"`, `"image_proxy"` (machine proxies),
    /// `"scanner"`, `"datacenter"` (scanners); anything else
    /// (`"residential"`, `"mobile"`, …) is no signal.
    pub ip_class: Option<String>,
}

/// Hits sooner than this after delivery are scanners: nobody reads a
/// message, or taps a link in it, within 2 seconds of it arriving.
pub const SCANNER_WINDOW_SECONDS: i64 = 2;

/// `User-Agent` fragments (lowercase) of mail providers' image proxies.
const PROXY_AGENTS: &[&str] = &["googleimageproxy", "ggpht.com", "yahoomailproxy"];

/// `User-Agent` fragments (lowercase) of security scanners, link-preview
/// fetchers and scripts.
///
/// `Microsoft Office` / `ms-office` are deliberately absent: Outlook for
/// Windows renders mail with those agents, so they are real readers.
const SCANNER_AGENTS: &[&str] = &[
    // Mail security gateways and link scanners.
    "barracuda",
    "mimecast",
    "proofpoint",
    "symantec",
    "messagelabs",
    "trendmicro",
    "trend micro",
    "fortiguard",
    "sophos",
    "ironport",
    "forcepoint",
    "zscaler",
    "bitdefender",
    "existence discovery",
    // Link previews (iMessage, WhatsApp, chat apps, search engines).
    "facebookexternalhit",
    "twitterbot",
    "slackbot",
    "discordbot",
    "telegrambot",
    "whatsapp/",
    "linkedinbot",
    "skypeuripreview",
    "googlebot",
    "bingbot",
    "bingpreview",
    "applebot",
    // Headless browsers and HTTP libraries.
    "headlesschrome",
    "phantomjs",
    "python-requests",
    "python-urllib",
    "aiohttp",
    "curl/",
    "wget/",
    "go-http-client",
    "libwww-perl",
    "apache-httpclient",
    "java/",
    "node-fetch",
    "axios/",
    "scrapy",
    // Generic crawlers.
    "bot/",
    "spider",
    "crawler",
];

/// The verdict of the host's address classification, if it gives one.
fn ip_verdict(ctx: &OpenContext) -> Option<OpenClass> {
    let class = ctx.ip_class.as_deref()?.trim().to_ascii_lowercase();
    match class.as_str() {
        "apple_mpp" | "google_proxy" | "yahoo_proxy" | "image_proxy" => {
            Some(OpenClass::MachineProxy)
        }
        "scanner" | "datacenter" => Some(OpenClass::Scanner),
        _ => None,
    }
}

/// The verdict of the user agent and timing, shared by opens and clicks;
/// `bare_mozilla` is what a bare `Mozilla/5.0` means.
fn agent_verdict(ctx: &OpenContext, bare_mozilla: OpenClass) -> OpenClass {
    if let Some(class) = ip_verdict(ctx) {
        return class;
    }
    if let Some(ua) = ctx.user_agent.as_deref() {
        let ua = ua.trim();
        let lower = ua.to_ascii_lowercase();
        if PROXY_AGENTS.iter().any(|p| lower.contains(p)) {
            return OpenClass::MachineProxy;
        }
        if lower == "mozilla/5.0" {
            return bare_mozilla;
        }
        if lower.is_empty() || SCANNER_AGENTS.iter().any(|s| lower.contains(s)) {
            return OpenClass::Scanner;
        }
    }
    if ctx
        .seconds_since_delivery
        .is_some_and(|s| s < SCANNER_WINDOW_SECONDS)
    {
        return OpenClass::Scanner;
    }
    OpenClass::Human
}

/// Classifies an open (a pixel fetch). Rules, first match wins:
///
/// 1. `ip_class` `apple_mpp`, `google_proxy`, `yahoo_proxy` or
///    `image_proxy` → [`OpenClass::MachineProxy`]; `scanner` or
///    `datacenter` → [`OpenClass::Scanner`].
/// 2. User agent containing `GoogleImageProxy`, `ggpht.com` (Gmail) or
///    `YahooMailProxy` → [`OpenClass::MachineProxy`].
/// 3. User agent exactly `Mozilla/5.0` with nothing further — what Apple
///    Mail Privacy Protection sends — → [`OpenClass::MachineProxy`].
/// 4. Empty user agent, or one naming a security scanner (Barracuda,
///    Mimecast, Proofpoint, Symantec/MessageLabs, Trend Micro, FortiGuard,
///    Sophos, IronPort, Forcepoint, Zscaler, Bitdefender, Microsoft Office
///    Existence Discovery), a link-preview fetcher (facebookexternalhit —
///    also iMessage —, Twitterbot, Slackbot, WhatsApp, …), a headless
///    browser or an HTTP library (curl, python-requests, Go, Java, …), or a
///    generic `…bot/`, spider or crawler → [`OpenClass::Scanner`].
///    Matching is case-insensitive. Outlook's own `Microsoft Office` /
///    `ms-office` agents are real readers and are **not** scanners.
/// 5. Less than [`SCANNER_WINDOW_SECONDS`] (2) after delivery →
///    [`OpenClass::Scanner`].
/// 6. Otherwise [`OpenClass::Human`].
///
/// A missing `user_agent` (`None`) or `seconds_since_delivery` is no
/// signal either way.
pub fn classify_open(ctx: &OpenContext) -> OpenClass {
    agent_verdict(ctx, OpenClass::MachineProxy)
}

/// Classifies a click: the rules of [`classify_open`], except that a bare
/// `Mozilla/5.0` agent is a [`OpenClass::Scanner`] — privacy proxies fetch
/// images, they do not follow links, so a bare agent following one is an
/// automated fetcher. Proxy addresses and agents still give
/// [`OpenClass::MachineProxy`].
pub fn classify_click(ctx: &OpenContext) -> OpenClass {
    agent_verdict(ctx, OpenClass::Scanner)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_767_600_000_000; // 2026-01-05T08:00:00Z
    const BASE: &str = "https://t.example-practice.com";

    fn ring() -> KeyRing {
        KeyRing::generate(NOW).unwrap()
    }

    #[test]
    fn signer_gives_the_known_tokens_repeatedly() {
        // HMAC-SHA256(secret, label || payload) truncated to 16 bytes,
        // computed independently (Python's hmac module).
        let r = KeyRing {
            keys: vec![SigningKey {
                version: 7,
                secret: std::array::from_fn(|i| i as u8),
                created_at_ms: 0,
            }],
        };
        let signer = r.signer();
        for _ in 0..2 {
            assert_eq!(
                signer.sign(TokenKind::Click, 42, 3, 1_767_225_600_999),
                "t1.AQcAAAAqAAAAAAAAAAMAALlVaQAAAAA.8QmczknZiIXZgaRDbTEgcg"
            );
            assert_eq!(
                signer.sign(TokenKind::Unsubscribe, 42, 0, 1_767_225_600_999),
                "t1.AgcAAAAqAAAAAAAAAAAAALlVaQAAAAA.moILOmstk4sj37xkoH8-pA"
            );
        }
        assert_eq!(
            r.sign(TokenKind::Click, 42, 3, 1_767_225_600_999),
            signer.sign(TokenKind::Click, 42, 3, 1_767_225_600_999)
        );
        assert_eq!(
            KeyRing { keys: vec![] }
                .signer()
                .sign(TokenKind::Open, 1, 0, 0),
            UNSIGNABLE_TOKEN
        );
    }

    #[test]
    fn a_sample_token_is_as_long_as_a_signed_one_and_verifies_as_nothing() {
        let r = ring();
        let sample = sample_token();
        assert_eq!(
            sample.len(),
            r.sign(TokenKind::Click, i64::MAX, u16::MAX, NOW).len()
        );
        assert_eq!(sample.len(), r.sign(TokenKind::Click, 1, 0, NOW).len());
        assert!(r.authenticate(&sample).is_err());
    }

    #[test]
    fn round_trip_for_every_kind() {
        let r = ring();
        for (kind, link) in [
            (TokenKind::Open, 0),
            (TokenKind::Click, 7),
            (TokenKind::Unsubscribe, 0),
        ] {
            let t = r.sign(kind, 123_456_789, link, NOW + 999);
            assert_eq!(t.len(), 57, "{t}");
            assert!(
                t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            );
            let c = r.verify(&t, NOW + 1000).unwrap();
            assert_eq!(
                c,
                Claims {
                    kind,
                    message_id: 123_456_789,
                    link,
                    issued_ms: NOW,
                    key_version: 1
                }
            );
        }
        for id in [i64::MIN, -1, 0, i64::MAX] {
            let t = r.sign(TokenKind::Click, id, u16::MAX, NOW);
            let c = r.verify(&t, NOW).unwrap();
            assert_eq!((c.message_id, c.link), (id, u16::MAX));
        }
    }

    #[test]
    fn tampering_any_character_is_refused() {
        let r = ring();
        let t = r.sign(TokenKind::Click, 42, 3, NOW);
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.";
        for i in 0..t.len() {
            for c in alphabet.chars() {
                let mut forged = t.clone();
                forged.replace_range(i..i + 1, &c.to_string());
                if forged != t {
                    assert!(r.verify(&forged, NOW).is_err(), "accepted {forged}");
                }
            }
        }
        // Dropping or adding characters.
        assert_eq!(r.verify(&t[..t.len() - 1], NOW), Err(TokenError::Malformed));
        assert_eq!(r.verify(&format!("{t}A"), NOW), Err(TokenError::Malformed));
        // A shorter tag is not accepted as a prefix.
        let short = &t[..t.rfind('.').unwrap() + 12];
        assert_eq!(r.verify(short, NOW), Err(TokenError::Malformed));
    }

    #[test]
    fn every_bit_flip_of_payload_and_tag_is_bad_signature() {
        let r = ring();
        let t = r.sign(TokenKind::Unsubscribe, 99, 0, NOW);
        let parts: Vec<&str> = t.split('.').collect();
        let payload = URL_SAFE_NO_PAD.decode(parts[1]).unwrap();
        let tag = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        for byte in 0..payload.len() {
            for bit in 0..8 {
                let mut p = payload.clone();
                p[byte] ^= 1 << bit;
                let forged = format!("t1.{}.{}", URL_SAFE_NO_PAD.encode(&p), parts[2]);
                let expected = if (1..5).contains(&byte) {
                    // The key version field: no such key in this ring.
                    TokenError::UnknownKey
                } else {
                    TokenError::BadSignature
                };
                assert_eq!(
                    r.verify(&forged, NOW),
                    Err(expected),
                    "byte {byte} bit {bit}"
                );
            }
        }
        for byte in 0..tag.len() {
            for bit in 0..8 {
                let mut g = tag.clone();
                g[byte] ^= 1 << bit;
                let forged = format!("t1.{}.{}", parts[1], URL_SAFE_NO_PAD.encode(&g));
                assert_eq!(r.verify(&forged, NOW), Err(TokenError::BadSignature));
            }
        }
    }

    #[test]
    fn other_keys_and_garbage_are_refused() {
        let a = ring();
        let b = ring(); // also version 1, different secret
        let t = a.sign(TokenKind::Open, 1, 0, NOW);
        assert_eq!(b.verify(&t, NOW), Err(TokenError::BadSignature));
        for junk in [
            "",
            "t1",
            "t1..",
            "t2.AAAA.AAAA",
            "t1.AAAA.AAAA",
            "t1.!!!.???",
            "t1.a.b.c",
            &"A".repeat(10_000),
        ] {
            assert_eq!(a.verify(junk, NOW), Err(TokenError::Malformed), "{junk}");
        }
    }

    #[test]
    fn wrong_kind_is_refused_where_a_kind_is_expected() {
        let r = ring();
        let click = r.sign(TokenKind::Click, 5, 1, NOW);
        let unsub = r.sign(TokenKind::Unsubscribe, 5, 0, NOW);
        assert_eq!(r.verify(&click, NOW).unwrap().kind, TokenKind::Click);
        assert_eq!(
            r.verify_kind(&click, TokenKind::Unsubscribe, NOW),
            Err(TokenError::WrongKind)
        );
        assert_eq!(
            r.verify_kind(&unsub, TokenKind::Open, NOW),
            Err(TokenError::WrongKind)
        );
        assert!(r.verify_kind(&unsub, TokenKind::Unsubscribe, NOW).is_ok());
        // Changing the kind byte to get a longer validity breaks the MAC.
        let parts: Vec<&str> = click.split('.').collect();
        let mut p = URL_SAFE_NO_PAD.decode(parts[1]).unwrap();
        p[0] = 2;
        let forged = format!("t1.{}.{}", URL_SAFE_NO_PAD.encode(&p), parts[2]);
        assert_eq!(r.verify(&forged, NOW), Err(TokenError::BadSignature));
    }

    #[test]
    fn expiry_at_the_boundary() {
        let r = ring();
        for kind in [TokenKind::Open, TokenKind::Click, TokenKind::Unsubscribe] {
            let t = r.sign(kind, 1, 0, NOW);
            let end = NOW + validity(kind);
            assert!(r.verify(&t, end - 1).is_ok());
            assert_eq!(r.verify(&t, end), Err(TokenError::Expired));
            assert_eq!(r.verify(&t, end + DAY_MS), Err(TokenError::Expired));
            // Still authentic, for redirects and unsubscribe pages.
            assert!(r.authenticate(&t).is_ok());
            assert!(validity(kind) >= 30 * DAY_MS);
        }
        assert_eq!(validity(TokenKind::Open), 120 * DAY_MS);
        assert_eq!(validity(TokenKind::Unsubscribe), 400 * DAY_MS);
        // Issue time is kept to the second, rounded down.
        let t = r.sign(TokenKind::Open, 1, 0, NOW + 999);
        assert_eq!(
            r.verify(&t, NOW + validity(TokenKind::Open)),
            Err(TokenError::Expired)
        );
        // Expired is only reported for authentic tokens.
        // Replace the last character with a different one (never the same by chance).
        let last = if t.ends_with('A') { 'B' } else { 'A' };
        let forged = format!("{}{last}", &t[..t.len() - 1]);
        assert_ne!(
            r.verify(&forged, NOW + 500 * DAY_MS),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn rotation_keeps_old_tokens_and_signs_with_the_new_key() {
        let mut r = ring();
        let old = r.sign(TokenKind::Click, 10, 2, NOW);
        let v2 = r.rotate(NOW + DAY_MS).unwrap();
        assert_eq!(v2, 2);
        assert_eq!(r.keys.len(), 2);
        assert_ne!(r.keys[0].secret, r.keys[1].secret);
        let new = r.sign(TokenKind::Click, 10, 2, NOW + DAY_MS);
        assert_eq!(r.verify(&old, NOW + DAY_MS).unwrap().key_version, 1);
        assert_eq!(r.verify(&new, NOW + DAY_MS).unwrap().key_version, 2);
        assert_eq!(r.rotate(NOW + 2 * DAY_MS).unwrap(), 3);
        assert_eq!(r.newest().unwrap().version, 3);
    }

    #[test]
    fn retire_removes_superseded_keys_but_never_the_newest() {
        let mut r = ring(); // v1 at NOW
        let t1 = r.sign(TokenKind::Unsubscribe, 1, 0, NOW);
        r.rotate(NOW + 10 * DAY_MS).unwrap(); // v2
        let t2 = r.sign(TokenKind::Unsubscribe, 1, 0, NOW + 10 * DAY_MS);
        r.rotate(NOW + 20 * DAY_MS).unwrap(); // v3

        // The safe cutoff keeps v1 while its tokens may still be valid.
        let at = NOW + 300 * DAY_MS;
        r.retire_older_than(at - MAX_VALIDITY_MS);
        assert_eq!(r.keys.len(), 3);
        assert!(r.verify(&t1, at).is_ok());

        // v1 stopped signing at day 10, v2 at day 20.
        r.retire_older_than(NOW + 15 * DAY_MS);
        let versions: Vec<u32> = r.keys.iter().map(|k| k.version).collect();
        assert_eq!(versions, vec![2, 3]);
        assert_eq!(r.verify(&t1, at), Err(TokenError::UnknownKey));
        assert!(r.verify(&t2, at).is_ok());

        r.retire_older_than(i64::MAX);
        assert_eq!(r.keys.len(), 1);
        assert_eq!(r.keys[0].version, 3);
        r.retire_older_than(i64::MAX);
        assert_eq!(r.keys.len(), 1);
    }

    #[test]
    fn ring_serializes_secrets_as_base64_and_validates() {
        let mut r = ring();
        r.rotate(NOW + 1).unwrap();
        let json = serde_json::to_value(&r).unwrap();
        let secret = json["keys"][0]["secret"].as_str().unwrap().to_string();
        assert_eq!(STANDARD.decode(&secret).unwrap(), r.keys[0].secret);
        let back: KeyRing = serde_json::from_value(json.clone()).unwrap();
        let t = r.sign(TokenKind::Open, 3, 0, NOW);
        assert!(back.verify(&t, NOW).is_ok());

        assert!(serde_json::from_str::<KeyRing>(r#"{"keys": []}"#).is_err());
        let mut dup = json.clone();
        dup["keys"][1]["version"] = 1.into();
        assert!(serde_json::from_value::<KeyRing>(dup).is_err());
        let mut short = json;
        short["keys"][0]["secret"] = "AAAA".into();
        assert!(serde_json::from_value::<KeyRing>(short).is_err());

        let debug = format!("{r:?}");
        assert!(debug.contains("redacted") && !debug.contains(&secret));
    }

    #[test]
    fn empty_ring_does_not_panic() {
        let mut r = KeyRing { keys: vec![] };
        assert!(r.validate().is_err());
        let t = r.sign(TokenKind::Open, 1, 0, NOW);
        assert_eq!(r.verify(&t, NOW), Err(TokenError::Malformed));
        r.retire_older_than(NOW);
        assert_eq!(r.rotate(NOW).unwrap(), 1);
        assert!(r.verify(&r.sign(TokenKind::Open, 1, 0, NOW), NOW).is_ok());
    }

    #[test]
    fn tokens_and_urls_carry_no_patient_data() {
        // A test "context": who the message went to.
        let email = "ann.patient@example.com";
        let (contact_id, phone, name) = ("contact-0077", "+15551234567", "Ann");
        let r = ring();
        let message_id = 77;
        let html = format!(
            "<p>Hi {name}</p><a href=\"https://portal.example.com/confirm?email={email}&amp;c={contact_id}\">Confirm</a>"
        );
        let (body, links) = wrap_html_links(&html, BASE, &|_| true, &|i| {
            r.sign(TokenKind::Click, message_id, i, NOW)
        });
        let (sms, _) = wrap_text_links(
            &format!("Confirm: https://portal.example.com/c?p={phone}"),
            BASE,
            &|_| true,
            &|i| r.sign(TokenKind::Click, message_id, i, NOW),
        );
        let pixel = open_pixel_tag(BASE, &r.sign(TokenKind::Open, message_id, 0, NOW));
        let unsub = unsubscribe_url(BASE, &r.sign(TokenKind::Unsubscribe, message_id, 0, NOW));
        let wrapped = body.replace(&format!("<p>Hi {name}</p>"), "");
        for s in [&wrapped, &sms, &pixel, &unsub] {
            for secret in [email, "ann.patient", contact_id, phone, "5551234567"] {
                assert!(!s.contains(secret), "{secret} in {s}");
            }
        }
        // The original target is returned for the store, decoded.
        assert_eq!(
            links[0].url,
            format!("https://portal.example.com/confirm?email={email}&c={contact_id}")
        );
    }

    #[test]
    fn wraps_html_links() {
        let r = ring();
        let sign = |i: u16| r.sign(TokenKind::Click, 500, i, NOW);
        let html = concat!(
            "<html><body>",
            "<a href=\"https://example.com/book?a=1&amp;b=2\">Book</a> ",
            "<A class='btn' HREF='HTTP://Example.com/x'>X</A> ",
            "<a href=\"mailto:front@example.com\">Mail</a> ",
            "<a href=\"tel:+15550100\">Call</a> ",
            "<a href=\"#top\">Top</a> ",
            "<a href=\"{{unsubscribe_link}}\">Unsubscribe</a> ",
            "<a href=\"https://t.example-practice.com/u/abc\">Unsub (rendered)</a> ",
            "<a href=\"https://t.example-practice.com/book\">A page on the site</a> ",
            "<a title=\"see href='https://evil.example'\" href=\"https://example.com/second\">2</a> ",
            "<a href=\"https://example.com/private\" data-no-track>nt</a> ",
            "<abbr href=\"https://example.com/no\">abbr</abbr> ",
            "<a href=https://example.com/unquoted>u</a> ",
            "<a\n  href = \" https://example.com/spaced \"\n>s</a>",
            "</body></html>"
        );
        let (out, links) = wrap_html_links(html, &format!("{BASE}/"), &|_| true, &sign);
        let urls: Vec<&str> = links.iter().map(|l| l.url.as_str()).collect();
        assert_eq!(
            urls,
            vec![
                "https://example.com/book?a=1&b=2",
                "HTTP://Example.com/x",
                "https://t.example-practice.com/book",
                "https://example.com/second",
                "https://example.com/spaced",
            ]
        );
        assert_eq!(
            links.iter().map(|l| l.index).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4]
        );
        for l in &links {
            let url = click_url(BASE, &sign(l.index));
            assert!(out.contains(&url), "{url} missing in {out}");
            let token = url.rsplit('/').next().unwrap();
            let c = r.verify_kind(token, TokenKind::Click, NOW).unwrap();
            assert_eq!((c.message_id, c.link), (500, l.index));
        }
        for kept in [
            "mailto:front@example.com",
            "tel:+15550100",
            "href=\"#top\"",
            "{{unsubscribe_link}}",
            "https://t.example-practice.com/u/abc",
            "https://example.com/private",
            "<abbr href=\"https://example.com/no\">",
            "href=https://example.com/unquoted>",
            "title=\"see href='https://evil.example'\"",
            "class='btn'",
        ] {
            assert!(out.contains(kept), "{kept} lost in {out}");
        }
        assert!(!out.contains("example.com/book"));
        assert!(!out.contains("example.com/second"));
        // Nothing to wrap: unchanged.
        let plain = "<p>No links <b>here</b> &amp; <a name=x>anchor</a></p>";
        assert_eq!(
            wrap_html_links(plain, BASE, &|_| true, &sign),
            (plain.to_string(), vec![])
        );
        // An unclosed tag at the end stops the scan without losing text.
        let broken = "<a href=\"https://example.com/a\">a</a><a href=\"https://x";
        let (out, links) = wrap_html_links(broken, BASE, &|_| true, &sign);
        assert_eq!(links.len(), 1);
        assert!(out.ends_with("<a href=\"https://x"));
    }

    #[test]
    fn wraps_text_links_without_trailing_punctuation() {
        let sign = |i: u16| format!("T{i}");
        let text = "Book at https://example.com/book. Or (https://example.com/faq), \
                    see https://en.wikipedia.org/wiki/Foo_(bar)! Really? https://a.example/x?y=1; \
                    HTTPS://Caps.example/Path: ok \"https://quoted.example\" \
                    <https://angle.example/p> mailto:a@b.c xhttps://glued.example \
                    https:// http://t.example-practice.com/c/keep {{unsubscribe_link}} \
                    https://ex.example/{{firstname}} end https://last.example/é";
        let (out, links) = wrap_text_links(text, "http://t.example-practice.com", &|_| true, &sign);
        let urls: Vec<&str> = links.iter().map(|l| l.url.as_str()).collect();
        assert_eq!(
            urls,
            vec![
                "https://example.com/book",
                "https://example.com/faq",
                "https://en.wikipedia.org/wiki/Foo_(bar)",
                "https://a.example/x?y=1",
                "HTTPS://Caps.example/Path",
                "https://quoted.example",
                "https://angle.example/p",
                "https://last.example/é",
            ]
        );
        let b = "http://t.example-practice.com/c/";
        assert_eq!(
            out,
            format!(
                "Book at {b}T0. Or ({b}T1), \
                 see {b}T2! Really? {b}T3; \
                 {b}T4: ok \"{b}T5\" \
                 <{b}T6> mailto:a@b.c xhttps://glued.example \
                 https:// http://t.example-practice.com/c/keep {{{{unsubscribe_link}}}} \
                 https://ex.example/{{{{firstname}}}} end {b}T7"
            )
        );
        let sms = "Reply STOP to opt out";
        assert_eq!(
            wrap_text_links(sms, BASE, &|_| true, &sign),
            (sms.to_string(), vec![])
        );
    }

    /// An email's text part numbers its links on from its HTML part's, up
    /// to the last index a token holds; the links past it stay as written.
    #[test]
    fn text_links_numbered_on_stop_at_the_last_index() {
        let sign = |i: u16| format!("T{i}");
        let text = "https://a.example/1 https://a.example/2 https://a.example/3";
        let (out, links) = wrap_text_links_from(text, BASE, &|_| true, &sign, u16::MAX - 1);
        let indexes: Vec<u16> = links.iter().map(|l| l.index).collect();
        assert_eq!(indexes, [u16::MAX - 1, u16::MAX]);
        assert!(out.ends_with(" https://a.example/3"), "{out}");
        assert!(out.contains(&format!("T{}", u16::MAX)), "{out}");
    }

    #[test]
    fn template_links_are_the_ones_the_template_wrote() {
        let t = TemplateLinks::of(
            "Book https://practice.example/book. Or https://practice.example/c?who={{firstname}} \
             or https://{{site}}/x or HTTP://Practice.example/Hours",
        );
        assert!(t.admits("https://practice.example/book"));
        assert!(t.admits("https://practice.example/c?who=Ann"));
        assert!(t.admits("HTTP://Practice.example/Hours"));
        assert!(
            !t.admits("https://practice.example/book-evil"),
            "exact links match exactly"
        );
        assert!(
            !t.admits("https://evil.example/x"),
            "a host from a placeholder is the contact's"
        );
        assert!(!t.admits("https://evil.example/prize"));
        assert!(!TemplateLinks::of("Hi {{firstname}}").admits("https://evil.example"));
    }

    /// An href whose path a `{% if %}` chooses, or that ends in a `.` or an
    /// unbalanced `)` inside its quotes, is still the template's link (both
    /// went out untracked).
    #[test]
    fn template_links_built_with_statements_or_ending_in_punctuation_are_the_templates() {
        let t = TemplateLinks::of_html(
            r#"<a href="https://practice.example/book{% if vip %}/vip{% else %}/std{% endif %}">Book</a>
               <a href="https://practice.example/menu.">Menu</a>
               <a href="https://practice.example/map)">Map</a>
               <a href="https://practice.example{% if a %}.evil.example{% endif %}/x">x</a>
               <a href="https://portal.example/p{# tracking id #}?a=1">Portal</a>"#,
        );
        assert!(t.admits("https://practice.example/book/vip"));
        assert!(t.admits("https://practice.example/book/std"));
        assert!(t.admits("https://practice.example/menu."));
        assert!(t.admits("https://practice.example/map)"));
        assert!(t.admits("https://portal.example/p?a=1"));
        assert!(
            !t.admits("https://practice.example.evil.example/x"),
            "a statement before the host is complete may change the host"
        );
        // The rendered message's links are wrapped.
        let html = r#"<a href="https://practice.example/book/vip">Book</a> <a href="https://practice.example/menu.">Menu</a>"#;
        let (out, links) = wrap_html_links(html, BASE, &|u| t.admits(u), &|i| format!("tok{i}"));
        assert_eq!(links.len(), 2, "{out}");
        assert_eq!(links[1].url, "https://practice.example/menu.");
        assert!(!out.contains("practice.example/menu"), "{out}");
    }

    #[test]
    fn pixel_and_responses() {
        assert_eq!(PIXEL_GIF.len(), 43);
        assert!(PIXEL_GIF.starts_with(b"GIF89a"));
        assert_eq!(PIXEL_GIF.last(), Some(&0x3b));
        let tag = open_pixel_tag(&format!("{BASE}/"), "t1.abc.def");
        assert_eq!(
            tag,
            "<img src=\"https://t.example-practice.com/o/t1.abc.def\" width=\"1\" height=\"1\" \
             alt=\"\" border=\"0\" style=\"display:block;width:1px;height:1px;border:0;margin:0;\
             padding:0;overflow:hidden;\" />"
        );
        let p = HitResponse::pixel();
        assert_eq!(p.status, 200);
        assert_eq!(STANDARD.decode(p.body_base64.unwrap()).unwrap(), PIXEL_GIF);
        assert_eq!(p.cache_control, NO_STORE);
        let r = HitResponse::redirect("https://example.com/a b\r\nSet-Cookie: x");
        assert_eq!(r.status, 302);
        assert_eq!(
            r.location.as_deref(),
            Some("https://example.com/a%20b%0D%0ASet-Cookie:%20x")
        );
        assert_eq!(HitResponse::redirect("javascript:alert(1)").status, 404);
        let json = serde_json::to_value(HitResponse::not_found()).unwrap();
        assert_eq!(json["status"], 404);
        assert_eq!(json["cache_control"], NO_STORE);
    }

    #[test]
    fn answers_hits() {
        let r = ring();
        let open = r.sign(TokenKind::Open, 8, 0, NOW);
        let click = r.sign(TokenKind::Click, 8, 1, NOW);
        let resolve = |m: i64, l: u16| (m == 8 && l == 1).then(|| "https://example.com/x".into());

        let (resp, c) = answer_open(&r, &open, NOW);
        assert_eq!((resp.status, c.map(|c| c.message_id)), (200, Some(8)));
        let (resp, c) = answer_open(&r, "garbage", NOW);
        assert_eq!((resp.status, c), (200, None));
        let (_, c) = answer_open(&r, &click, NOW);
        assert_eq!(c, None);

        let (resp, c) = answer_click(&r, &click, NOW, &resolve);
        assert_eq!(resp.location.as_deref(), Some("https://example.com/x"));
        assert_eq!(c.map(|c| c.link), Some(1));
        // Expired: still redirects, not counted.
        let late = NOW + validity(TokenKind::Click);
        let (resp, c) = answer_click(&r, &click, late, &resolve);
        assert_eq!((resp.status, c), (302, None));
        // Wrong kind, unknown link, forged: 404.
        assert_eq!(answer_click(&r, &open, NOW, &resolve).0.status, 404);
        let other = r.sign(TokenKind::Click, 8, 2, NOW);
        assert_eq!(
            answer_click(&r, &other, NOW, &resolve),
            (HitResponse::not_found(), None)
        );
        assert_eq!(answer_click(&r, "t1.x.y", NOW, &resolve).0.status, 404);
    }

    fn ctx(ua: Option<&str>, secs: Option<i64>, ip: Option<&str>) -> OpenContext {
        OpenContext {
            user_agent: ua.map(String::from),
            seconds_since_delivery: secs,
            ip_class: ip.map(String::from),
        }
    }

    #[test]
    fn classifies_opens() {
        use OpenClass::*;
        let iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148";
        let outlook = "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17029; Pro)";
        let gmail = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)";
        let cases = [
            (ctx(Some(iphone), Some(600), None), Human),
            (ctx(Some(outlook), Some(600), None), Human),
            (
                ctx(
                    Some("Mozilla/4.0 (compatible; ms-office; MSOffice 16)"),
                    None,
                    None,
                ),
                Human,
            ),
            (ctx(None, None, None), Human),
            (ctx(None, Some(2), Some("residential")), Human),
            (ctx(Some("Mozilla/5.0"), Some(600), None), MachineProxy),
            (ctx(Some(" mozilla/5.0 "), None, None), MachineProxy),
            (
                ctx(Some(iphone), Some(600), Some("apple_mpp")),
                MachineProxy,
            ),
            (ctx(Some(gmail), Some(600), None), MachineProxy),
            (
                ctx(Some("YahooMailProxy; https://help.yahoo.com"), None, None),
                MachineProxy,
            ),
            (ctx(Some(iphone), None, Some("Google_Proxy")), MachineProxy),
            (ctx(Some("Mozilla/5.0"), Some(0), None), MachineProxy),
            (
                ctx(Some("Barracuda Sentinel (EE)"), Some(600), None),
                Scanner,
            ),
            (ctx(Some("Mozilla/5.0 Mimecast"), None, None), Scanner),
            (ctx(Some("Proofpoint URL Defense"), None, None), Scanner),
            (ctx(Some("python-requests/2.31"), None, None), Scanner),
            (ctx(Some(""), None, None), Scanner),
            (ctx(Some(iphone), Some(1), None), Scanner),
            (ctx(Some(iphone), Some(0), None), Scanner),
            (ctx(Some(iphone), Some(-5), None), Scanner),
            (ctx(Some(iphone), Some(600), Some("scanner")), Scanner),
        ];
        for (c, want) in cases {
            assert_eq!(classify_open(&c), want, "{c:?}");
        }
    }

    #[test]
    fn classifies_clicks() {
        use OpenClass::*;
        let chrome = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36";
        let imessage = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_11_1) AppleWebKit/601.2.4 (KHTML, like Gecko) Version/9.0.1 Safari/601.2.4 facebookexternalhit/1.1 Facebot Twitterbot/1.0";
        assert_eq!(classify_click(&ctx(Some(chrome), Some(3600), None)), Human);
        assert_eq!(classify_click(&ctx(Some(chrome), Some(1), None)), Scanner);
        assert_eq!(
            classify_click(&ctx(Some("Mozilla/5.0"), None, None)),
            Scanner
        );
        assert_eq!(classify_click(&ctx(Some(imessage), Some(5), None)), Scanner);
        assert_eq!(
            classify_click(&ctx(
                Some("Microsoft Office Existence Discovery"),
                None,
                None
            )),
            Scanner
        );
        assert_eq!(
            classify_click(&ctx(Some(chrome), None, Some("datacenter"))),
            Scanner
        );
        assert_eq!(
            classify_click(&ctx(Some(chrome), None, Some("apple_mpp"))),
            MachineProxy
        );
    }

    #[test]
    fn error_messages_do_not_echo_input() {
        let r = ring();
        let secret_ish = "t1.ann@example.com.x";
        let e = r.verify(secret_ish, NOW).unwrap_err();
        assert!(!e.to_string().contains("ann"));
        for e in [
            TokenError::Malformed,
            TokenError::UnknownKey,
            TokenError::BadSignature,
            TokenError::Expired,
            TokenError::WrongKind,
        ] {
            assert!(e.to_string().contains("tracking token"));
        }
    }
}
