//! Checks every request passes before routing and auth: its size, its `Host` and its `Origin`.
//!
//! hyper answers a request line or header block beyond its own buffers with an empty 414 or
//! 431 it writes itself. The server loop gives hyper generous limits and this layer enforces
//! tighter ones first, so a client that overdoes it gets the API's JSON error instead.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::config::HostPolicy;
use crate::error::ApiError;
use crate::state::AppState;

/// Longest request target (path and query) answered.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Most request header bytes (names, values and separators) answered.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most request headers answered. hyper is given room for more, so it never answers first.
pub const MAX_HEADERS: usize = 100;

fn check_size(request: &Request) -> Result<(), ApiError> {
    let uri_len = request.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri_len > MAX_URI_BYTES {
        return Err(ApiError::UriTooLong(MAX_URI_BYTES));
    }
    let headers = request.headers();
    if headers.len() > MAX_HEADERS {
        return Err(ApiError::HeadersTooLarge(format!(
            "{} request headers; at most {MAX_HEADERS} are answered",
            headers.len()
        )));
    }
    let bytes: usize = headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    if bytes > MAX_HEADER_BYTES {
        return Err(ApiError::HeadersTooLarge(format!(
            "{bytes} bytes of request headers; at most {MAX_HEADER_BYTES} are answered"
        )));
    }
    Ok(())
}

/// The host name of a `Host` value or an origin's authority: the port and IPv6 brackets
/// removed, lowercased. `None` when it is not a well-formed authority.
fn host_name(authority: &str) -> Option<String> {
    let authority: axum::http::uri::Authority = authority.parse().ok()?;
    if authority.as_str().contains('@') {
        return None;
    }
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Some(host.to_ascii_lowercase())
}

fn is_loopback_name(host: &str) -> bool {
    host == "localhost"
        || host.ends_with(".localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl HostPolicy {
    /// Whether a request naming `host` (a bare host name, see [`host_name`]) is answered.
    fn allows(&self, host: &str) -> bool {
        match self {
            HostPolicy::Any => true,
            HostPolicy::Loopback { also } => {
                is_loopback_name(host) || also.iter().any(|name| name.eq_ignore_ascii_case(host))
            }
        }
    }
}

fn check_host(policy: &HostPolicy, headers: &HeaderMap) -> Result<(), ApiError> {
    if *policy == HostPolicy::Any {
        return Ok(());
    }
    let Some(value) = headers.get(header::HOST) else {
        return Err(ApiError::MisdirectedHost(
            "a Host header is required (this server answers only its own names)".into(),
        ));
    };
    let text = String::from_utf8_lossy(value.as_bytes());
    match host_name(&text) {
        Some(host) if policy.allows(&host) => Ok(()),
        _ => Err(ApiError::MisdirectedHost(format!(
            "this server does not answer for Host {text:?}: it listens on loopback and answers \
             only localhost, 127.0.0.1 and [::1] (add names with --allowed-host)"
        ))),
    }
}

/// A browser sends `Origin` on cross-origin requests, including `EventSource`. A page from
/// another site must not read the stream even if it gets the browser to connect.
fn check_origin(policy: &HostPolicy, headers: &HeaderMap) -> Result<(), ApiError> {
    if *policy == HostPolicy::Any {
        return Ok(());
    }
    let Some(value) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let text = String::from_utf8_lossy(value.as_bytes());
    let host = text
        .split_once("://")
        .filter(|(scheme, _)| matches!(*scheme, "http" | "https"))
        .and_then(|(_, rest)| host_name(rest));
    match host {
        Some(host) if policy.allows(&host) => Ok(()),
        _ => Err(ApiError::Forbidden(format!(
            "requests from the web origin {text:?} are not answered"
        ))),
    }
}

pub async fn check(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    check_size(&request)?;
    let policy = &state.config().hosts;
    check_host(policy, request.headers())?;
    check_origin(policy, request.headers())?;
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(name: header::HeaderName, value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn loopback_policy_answers_only_loopback_names_and_extras() {
        let policy = HostPolicy::Loopback {
            also: vec!["Proxy.Example".into()],
        };
        for ok in [
            "localhost:7878",
            "127.0.0.1:7878",
            "[::1]:7878",
            "LOCALHOST",
            "127.0.0.2",
            "proxy.example:80",
        ] {
            assert!(check_host(&policy, &with(header::HOST, ok)).is_ok(), "{ok}");
        }
        for bad in [
            "attacker.example:7878",
            "localhost.attacker.example",
            "user@localhost",
            "",
            "[::2]",
        ] {
            assert!(check_host(&policy, &with(header::HOST, bad)).is_err(), "{bad}");
        }
        assert!(check_host(&policy, &HeaderMap::new()).is_err());
        assert!(check_host(&HostPolicy::Any, &with(header::HOST, "attacker.example")).is_ok());
    }

    #[test]
    fn origin_must_be_an_allowed_http_origin() {
        let policy = HostPolicy::default();
        assert!(check_origin(&policy, &HeaderMap::new()).is_ok());
        assert!(check_origin(&policy, &with(header::ORIGIN, "http://localhost:7878")).is_ok());
        assert!(check_origin(&policy, &with(header::ORIGIN, "http://attacker.example")).is_err());
        assert!(check_origin(&policy, &with(header::ORIGIN, "null")).is_err());
        assert!(check_origin(&policy, &with(header::ORIGIN, "file://localhost")).is_err());
    }
}
