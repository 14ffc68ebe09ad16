//! The `fetch` import of sender adapters: outbound HTTP to granted origins only.
//!
//! Policy, in order: the method and URL are well formed; the URL's scheme,
//! host and port match a grant of the plugin; every address the host name
//! resolves to is public (not private, loopback, link-local, …) unless the
//! plugin's limits allow the private network; no proxy from the environment;
//! a redirect is an error, never followed; the body is read up to the cap;
//! the whole exchange is bounded by what is left of the call's deadline. The
//! check of resolved addresses happens inside the connection's own
//! resolution, so a name cannot resolve to a public address for the check and
//! a private one for the connection.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::DefaultConnector;

use crate::error::{Error, Result};

/// One granted origin: scheme, host and port (`https://api.example.com`,
/// `http://127.0.0.1:8080`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    scheme: String,
    host: String,
    port: u16,
}

impl Grant {
    /// Parses an origin. A path other than `/`, a query, a fragment or
    /// credentials are refused: a grant is an origin, nothing more.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] saying what is wrong.
    pub fn parse(text: &str) -> Result<Grant> {
        let bad = |why: &str| Error::invalid(format!("grants: {text:?}: {why}"));
        let url = url::Url::parse(text.trim()).map_err(|e| bad(&e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad("the scheme must be http or https"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad("credentials are not allowed"));
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(bad("a grant is an origin: scheme, host and port only"));
        }
        let host = url
            .host_str()
            .ok_or_else(|| bad("a host is required"))?
            .to_ascii_lowercase();
        let port = url
            .port_or_known_default()
            .ok_or_else(|| bad("a port is required"))?;
        Ok(Grant {
            scheme: url.scheme().to_string(),
            host,
            port,
        })
    }

    fn matches(&self, url: &url::Url) -> bool {
        url.scheme() == self.scheme
            && url
                .host_str()
                .is_some_and(|h| h.eq_ignore_ascii_case(&self.host))
            && url.port_or_known_default() == Some(self.port)
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// An HTTP request from a plugin.
#[derive(Debug, Clone)]
pub struct FetchRequest {
    /// `GET`, `POST`, `PUT`, `PATCH` or `DELETE`.
    pub method: String,
    /// Absolute URL.
    pub url: String,
    /// Request headers.
    pub headers: Vec<(String, String)>,
    /// Request body.
    pub body: Vec<u8>,
}

/// The answer handed back to the plugin.
#[derive(Debug, Clone)]
pub struct FetchResponse {
    /// Status code (never 3xx: redirects are errors).
    pub status: u16,
    /// Response headers (values that are not UTF-8 are dropped).
    pub headers: Vec<(String, String)>,
    /// Response body, at most the cap.
    pub body: Vec<u8>,
}

/// Why a fetch did not happen or did not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchFailure {
    /// Malformed method, URL or header.
    InvalidRequest(String),
    /// Scheme, host or port not granted.
    NotGranted(String),
    /// The host is or resolves to a private, loopback or link-local address.
    PrivateAddress(String),
    /// The server answered with a redirect.
    RedirectRefused(String),
    /// The body exceeds the cap (bytes).
    TooLarge(u64),
    /// The call's deadline passed.
    Timeout,
    /// DNS, connection or TLS failure.
    Connection(String),
}

impl FetchFailure {
    /// A short code for figures and logs.
    pub fn code(&self) -> &'static str {
        match self {
            FetchFailure::InvalidRequest(_) => "invalid_request",
            FetchFailure::NotGranted(_) => "not_granted",
            FetchFailure::PrivateAddress(_) => "private_address",
            FetchFailure::RedirectRefused(_) => "redirect_refused",
            FetchFailure::TooLarge(_) => "too_large",
            FetchFailure::Timeout => "timeout",
            FetchFailure::Connection(_) => "connection",
        }
    }
}

impl fmt::Display for FetchFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchFailure::InvalidRequest(m)
            | FetchFailure::NotGranted(m)
            | FetchFailure::PrivateAddress(m)
            | FetchFailure::RedirectRefused(m)
            | FetchFailure::Connection(m) => write!(f, "{}: {m}", self.code()),
            FetchFailure::TooLarge(cap) => write!(f, "too_large: body over {cap} bytes"),
            FetchFailure::Timeout => f.write_str("timeout"),
        }
    }
}

/// What one plugin's fetches may reach.
#[derive(Debug, Clone)]
pub struct FetchPolicy {
    /// Granted origins.
    pub grants: Vec<Grant>,
    /// Private, loopback and link-local addresses allowed.
    pub allow_private_network: bool,
    /// Body cap in bytes.
    pub max_body: u64,
}

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];
/// Headers the plugin may not set: the transport owns them.
const RESERVED_HEADERS: [&str; 7] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "proxy-authorization",
    "te",
];

impl FetchPolicy {
    /// Checks the request against the policy without touching the network.
    fn check(&self, req: &FetchRequest) -> std::result::Result<url::Url, FetchFailure> {
        let invalid = |m: String| FetchFailure::InvalidRequest(m);
        if !METHODS.contains(&req.method.as_str()) {
            return Err(invalid(format!("method {:?} is not allowed", req.method)));
        }
        let url = url::Url::parse(&req.url).map_err(|e| invalid(format!("url: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid("url: the scheme must be http or https".into()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid(
                "url: credentials in the URL are not allowed".into(),
            ));
        }
        for (name, _) in &req.headers {
            if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                return Err(invalid(format!("header {name:?} is set by the host")));
            }
        }
        let origin = format!(
            "{}://{}:{}",
            url.scheme(),
            url.host_str().unwrap_or_default(),
            url.port_or_known_default().unwrap_or_default()
        );
        if !self.grants.iter().any(|g| g.matches(&url)) {
            return Err(FetchFailure::NotGranted(origin));
        }
        let literal = match url.host() {
            Some(url::Host::Ipv4(a)) => Some(IpAddr::V4(a)),
            Some(url::Host::Ipv6(a)) => Some(IpAddr::V6(a)),
            _ => None,
        };
        if let Some(ip) = literal
            && !self.allow_private_network
            && !is_public(ip)
        {
            return Err(FetchFailure::PrivateAddress(origin));
        }
        Ok(url)
    }

    /// Runs one request under the policy, giving up at `deadline`.
    pub fn fetch(
        &self,
        req: &FetchRequest,
        deadline: Instant,
    ) -> std::result::Result<FetchResponse, FetchFailure> {
        let url = self.check(req)?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left < Duration::from_millis(1) {
            return Err(FetchFailure::Timeout);
        }
        let refused = Arc::new(Mutex::new(None));
        let config = ureq::Agent::config_builder()
            .max_redirects(0)
            .http_status_as_error(false)
            .proxy(None)
            .timeout_global(Some(left))
            .user_agent("crm-module-plugin")
            .save_redirect_history(false)
            .build();
        let agent = ureq::Agent::with_parts(
            config,
            DefaultConnector::default(),
            PolicyResolver {
                inner: DefaultResolver::default(),
                allow_private: self.allow_private_network,
                refused: refused.clone(),
            },
        );
        let mut builder = ureq::http::Request::builder()
            .method(req.method.as_str())
            .uri(url.as_str());
        for (name, value) in &req.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let sent = if req.body.is_empty() {
            builder
                .body(ureq::SendBody::none())
                .map_err(|e| FetchFailure::InvalidRequest(format!("header: {e}")))
                .and_then(|r| agent.run(r).map_err(|e| map_error(e, &refused, &url)))
        } else {
            builder
                .body(req.body.as_slice())
                .map_err(|e| FetchFailure::InvalidRequest(format!("header: {e}")))
                .and_then(|r| agent.run(r).map_err(|e| map_error(e, &refused, &url)))
        };
        let mut response = sent?;
        let status = response.status().as_u16();
        if (300..400).contains(&status) {
            return Err(FetchFailure::RedirectRefused(format!("http {status}")));
        }
        let headers = response
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        let body = response
            .body_mut()
            .with_config()
            .limit(self.max_body)
            .read_to_vec()
            .map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(_) => FetchFailure::TooLarge(self.max_body),
                other => map_error(other, &refused, &url),
            })?;
        Ok(FetchResponse {
            status,
            headers,
            body,
        })
    }
}

fn map_error(e: ureq::Error, refused: &Mutex<Option<IpAddr>>, url: &url::Url) -> FetchFailure {
    if refused.lock().is_some() {
        return FetchFailure::PrivateAddress(url.host_str().unwrap_or_default().to_string());
    }
    match e {
        ureq::Error::Timeout(_) => FetchFailure::Timeout,
        ureq::Error::TooManyRedirects | ureq::Error::RedirectFailed => {
            FetchFailure::RedirectRefused("redirect".into())
        }
        ureq::Error::BodyExceedsLimit(n) => FetchFailure::TooLarge(n),
        ureq::Error::HostNotFound => FetchFailure::Connection("host not found".into()),
        ureq::Error::Http(e) => FetchFailure::InvalidRequest(e.to_string()),
        ureq::Error::BadUri(m) => FetchFailure::InvalidRequest(m),
        ureq::Error::Io(e) if e.kind() == io::ErrorKind::TimedOut => FetchFailure::Timeout,
        other => FetchFailure::Connection(other.to_string()),
    }
}

/// Resolves through the system resolver, then refuses any non-public address.
#[derive(Debug)]
struct PolicyResolver {
    inner: DefaultResolver,
    allow_private: bool,
    refused: Arc<Mutex<Option<IpAddr>>>,
}

impl Resolver for PolicyResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> std::result::Result<ResolvedSocketAddrs, ureq::Error> {
        let addrs = self.inner.resolve(uri, config, timeout)?;
        if !self.allow_private
            && let Some(bad) = addrs.iter().map(|a| a.ip()).find(|ip| !is_public(*ip))
        {
            *self.refused.lock() = Some(bad);
            return Err(ureq::Error::Io(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "address not allowed",
            )));
        }
        Ok(addrs)
    }
}

/// True for a globally routable unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => is_public_v4(a),
        IpAddr::V6(a) => is_public_v6(a),
    }
}

fn is_public_v4(a: Ipv4Addr) -> bool {
    let [o0, o1, o2, _] = a.octets();
    !(a.is_private()
        || a.is_loopback()
        || a.is_link_local()
        || a.is_unspecified()
        || a.is_broadcast()
        || a.is_documentation()
        || a.is_multicast()
        || o0 == 0
        || o0 >= 240
        || (o0 == 100 && (64..128).contains(&o1)) // shared address space
        || (o0 == 192 && o1 == 0 && o2 == 0) // IETF protocol assignments
        || (o0 == 198 && (o1 == 18 || o1 == 19))) // benchmarking
}

fn is_public_v6(a: Ipv6Addr) -> bool {
    if let Some(v4) = a.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = a.segments();
    let embedded_v4 =
        |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if s[0] == 0x2002 {
        return is_public_v4(embedded_v4(s[1], s[2])); // 6to4
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_public_v4(embedded_v4(s[6], s[7])); // NAT64
    }
    if s[..6] == [0, 0, 0, 0, 0xffff, 0] {
        return is_public_v4(embedded_v4(s[6], s[7])); // SIIT (IPv4-translated)
    }
    !(a.is_loopback()
        || a.is_unspecified()
        || a.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[..3] == [0x64, 0xff9b, 1]) // local-use NAT64: a site's own translator
        || s[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible (deprecated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(grants: &[&str], private: bool) -> FetchPolicy {
        FetchPolicy {
            grants: grants.iter().map(|g| Grant::parse(g).unwrap()).collect(),
            allow_private_network: private,
            max_body: 1024,
        }
    }

    fn get(url: &str) -> FetchRequest {
        FetchRequest {
            method: "GET".into(),
            url: url.into(),
            headers: vec![],
            body: vec![],
        }
    }

    #[test]
    fn grants_are_origins() {
        let g = Grant::parse("HTTPS://API.Example.com").unwrap();
        assert_eq!(g.to_string(), "https://api.example.com:443");
        assert_eq!(
            Grant::parse("http://127.0.0.1:8080/").unwrap().to_string(),
            "http://127.0.0.1:8080"
        );
        for bad in [
            "ftp://x.example",
            "https://x.example/path",
            "https://u:p@x.example",
            "https://x.example?q=1",
            "not a url",
        ] {
            assert!(Grant::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scheme_host_and_port_must_all_match_a_grant() {
        let p = policy(&["https://api.example.com"], false);
        assert!(p.check(&get("https://api.example.com/v1/sms")).is_ok());
        assert!(p.check(&get("https://API.example.com:443/x")).is_ok());
        for url in [
            "http://api.example.com/v1",
            "https://api.example.com:8443/v1",
            "https://evil.example.com/v1",
            "https://api.example.com.evil.example/v1",
        ] {
            assert!(
                matches!(p.check(&get(url)), Err(FetchFailure::NotGranted(_))),
                "{url}"
            );
        }
    }

    #[test]
    fn private_literals_are_refused_unless_allowed() {
        let p = policy(&["http://127.0.0.1:8080", "http://[::1]:8080"], false);
        assert!(matches!(
            p.check(&get("http://127.0.0.1:8080/")),
            Err(FetchFailure::PrivateAddress(_))
        ));
        assert!(matches!(
            p.check(&get("http://[::1]:8080/")),
            Err(FetchFailure::PrivateAddress(_))
        ));
        let open = policy(&["http://127.0.0.1:8080"], true);
        assert!(open.check(&get("http://127.0.0.1:8080/")).is_ok());
    }

    #[test]
    fn malformed_requests_are_refused() {
        let p = policy(&["https://api.example.com"], false);
        let mut r = get("https://api.example.com/");
        r.method = "CONNECT".into();
        assert!(matches!(p.check(&r), Err(FetchFailure::InvalidRequest(_))));
        let mut r = get("https://api.example.com/");
        r.headers.push(("Host".into(), "internal".into()));
        assert!(matches!(p.check(&r), Err(FetchFailure::InvalidRequest(_))));
        assert!(matches!(
            p.check(&get("file:///etc/passwd")),
            Err(FetchFailure::InvalidRequest(_))
        ));
    }

    #[test]
    fn address_classes() {
        for private in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "2002:0a00:0001::",
            "64:ff9b::7f00:1",
            "64:ff9b:1::a00:1",
            "64:ff9b:1:ffff::808:808",
            "::ffff:0:a00:1",
            "::ffff:0:7f00:1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "::ffff:0:808:808",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }
}
