//! Who may use the console: the access token (required off loopback), the session cookie that
//! stands for it in a browser, the CSRF token that state-changing requests must carry, and the
//! `Host` check that keeps a DNS-rebinding page away from a loopback console without a token.
//!
//! The access token itself never reaches the page: a browser presents it once (`/?token=…`),
//! gets an `HttpOnly` cookie holding a random per-process session value instead, and is sent
//! to `/` without the token in its address bar.

use std::net::IpAddr;

use axum::http::{header, HeaderMap, HeaderValue};

use crate::error::{CliError, CliResult};
use crate::secret::Secret;

/// The header state-changing requests carry the page's CSRF token in.
pub const CSRF_HEADER: &str = "x-dcron-csrf";

/// The shortest access token accepted.
pub const MIN_TOKEN_LEN: usize = 8;

/// `n` random bytes from the operating system, as lowercase hex.
///
/// # Errors
/// Failed (exit code 1) when the operating system has no randomness to give.
pub fn random_hex(n: usize) -> CliResult<String> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf)
        .map_err(|e| CliError::failed(format!("no randomness for the console's tokens: {e}")))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Compares two byte strings in time that depends on their lengths only.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The console's credentials for one process.
#[derive(Clone, Debug)]
pub struct Guard {
    token: Option<Secret>,
    session: Secret,
    csrf: String,
    cookie_name: String,
}

/// How a request proved it may use the console.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No token is configured (loopback only).
    Open,
    /// `Authorization: Bearer <token>` or the session cookie.
    Granted,
    /// `?token=<token>` on a `GET`: set the cookie and redirect to the same path without it.
    Login,
    /// Missing or wrong credentials.
    Denied,
}

impl Guard {
    /// A guard for a console listening on `port`, with its fresh random session and CSRF values.
    ///
    /// # Errors
    /// As [`random_hex`].
    pub fn new(token: Option<Secret>, port: u16) -> CliResult<Self> {
        Ok(Guard {
            token,
            session: Secret::new(random_hex(32)?),
            csrf: random_hex(32)?,
            cookie_name: format!("dcron_console_{port}"),
        })
    }

    /// The per-process CSRF token the page embeds.
    pub fn csrf(&self) -> &str {
        &self.csrf
    }

    /// Whether a token is required.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// The `Set-Cookie` value that stands for the token in a browser.
    pub fn session_cookie(&self) -> String {
        format!(
            "{}={}; HttpOnly; SameSite=Strict; Path=/",
            self.cookie_name,
            self.session.expose()
        )
    }

    /// Decides about a request from its headers and its query string.
    pub fn check(&self, headers: &HeaderMap, query: Option<&str>) -> Access {
        let Some(token) = &self.token else {
            return Access::Open;
        };
        let token = token.expose().as_bytes();
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if bearer.is_some_and(|b| same(b.as_bytes(), token)) {
            return Access::Granted;
        }
        let session = self.session.expose().as_bytes();
        let cookie_ok = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .any(|(k, v)| k == self.cookie_name && same(v.as_bytes(), session));
        if cookie_ok {
            return Access::Granted;
        }
        let from_query = query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter_map(|kv| kv.split_once('='))
            .any(|(k, v)| k == "token" && same(percent_decode(v).as_bytes(), token));
        if from_query {
            return Access::Login;
        }
        Access::Denied
    }

    /// Whether a state-changing request carries the page's CSRF token and, when the browser
    /// says where it comes from, comes from this console's own origin.
    pub fn csrf_ok(&self, headers: &HeaderMap) -> bool {
        let token_ok = headers
            .get(CSRF_HEADER)
            .is_some_and(|v| same(v.as_bytes(), self.csrf.as_bytes()));
        let origin_ok = match (headers.get(header::ORIGIN), headers.get(header::HOST)) {
            (None, _) => true,
            (Some(origin), Some(host)) => origin_host(origin) == host.to_str().ok(),
            (Some(_), None) => false,
        };
        token_ok && origin_ok
    }
}

fn origin_host(origin: &HeaderValue) -> Option<&str> {
    let s = origin.to_str().ok()?;
    s.split_once("://")
        .map(|(_, rest)| rest.trim_end_matches('/'))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = (bytes[i] == b'%')
            .then(|| s.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a `Host` header names this machine by an IP address or `localhost`: what a
/// loopback console without a token accepts, so that a page on another domain that rebinds
/// its name to 127.0.0.1 cannot read or steer it.
pub fn host_is_local(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok()
}

/// Checks the listen address against the token: off loopback a token of at least
/// [`MIN_TOKEN_LEN`] characters is required.
///
/// # Errors
/// A usage error (exit code 2) otherwise, or for a token that is too short.
pub fn check_listen(listen: IpAddr, token: Option<&Secret>) -> CliResult<()> {
    match token {
        Some(t) if t.expose().chars().count() < MIN_TOKEN_LEN => Err(CliError::usage(format!(
            "the console token must have at least {MIN_TOKEN_LEN} characters"
        ))),
        None if !listen.is_loopback() => Err(CliError::usage(format!(
            "the console listens on {listen}, which is not a loopback address: pass \
             --console-token or set {} so that every request must carry it",
            super::ENV_CONSOLE_TOKEN
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    #[test]
    fn token_cookie_and_query() {
        let g = Guard::new(Some(Secret::new("s3cret-token")), 8080).expect("guard");
        assert_eq!(g.check(&HeaderMap::new(), None), Access::Denied);
        assert_eq!(
            g.check(&headers(&[("authorization", "Bearer s3cret-token")]), None),
            Access::Granted
        );
        assert_eq!(
            g.check(&headers(&[("authorization", "Bearer s3cret-tokeX")]), None),
            Access::Denied
        );
        assert_eq!(
            g.check(&HeaderMap::new(), Some("a=1&token=s3cret%2Dtoken")),
            Access::Login
        );
        let cookie = g.session_cookie();
        assert!(!cookie.contains("s3cret"), "{cookie}");
        let pair = cookie.split(';').next().expect("pair").to_string();
        assert_eq!(
            g.check(&headers(&[("cookie", &format!("x=1; {pair}"))]), None),
            Access::Granted
        );
        assert_eq!(
            g.check(&headers(&[("cookie", "dcron_console_8080=nope")]), None),
            Access::Denied
        );
        let open = Guard::new(None, 8080).expect("guard");
        assert_eq!(open.check(&HeaderMap::new(), None), Access::Open);
    }

    #[test]
    fn csrf_needs_the_header_and_a_matching_origin() {
        let g = Guard::new(None, 1).expect("guard");
        let csrf = g.csrf().to_string();
        assert!(!g.csrf_ok(&HeaderMap::new()));
        assert!(g.csrf_ok(&headers(&[(CSRF_HEADER, &csrf)])));
        assert!(g.csrf_ok(&headers(&[
            (CSRF_HEADER, &csrf),
            ("origin", "http://127.0.0.1:1"),
            ("host", "127.0.0.1:1"),
        ])));
        assert!(!g.csrf_ok(&headers(&[
            (CSRF_HEADER, &csrf),
            ("origin", "http://evil.example"),
            ("host", "127.0.0.1:1"),
        ])));
        assert!(!g.csrf_ok(&headers(&[(CSRF_HEADER, "0")])));
    }

    #[test]
    fn hosts_and_listen_addresses() {
        for ok in ["127.0.0.1:8080", "localhost:1", "[::1]:8080", "10.0.0.1"] {
            assert!(host_is_local(&headers(&[("host", ok)])), "{ok}");
        }
        for bad in ["evil.example:8080", "evil.example"] {
            assert!(!host_is_local(&headers(&[("host", bad)])), "{bad}");
        }
        assert!(!host_is_local(&HeaderMap::new()));
        let lo: IpAddr = "127.0.0.1".parse().expect("ip");
        let any: IpAddr = "0.0.0.0".parse().expect("ip");
        assert!(check_listen(lo, None).is_ok());
        assert_eq!(
            check_listen(any, None)
                .expect_err("needs a token")
                .exit_code(),
            crate::error::EXIT_USAGE
        );
        assert!(check_listen(any, Some(&Secret::new("short"))).is_err());
        assert!(check_listen(any, Some(&Secret::new("long-enough"))).is_ok());
    }
}
