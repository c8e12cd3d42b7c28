//! Query parameters of `/events` and `/events/stream`, and the event filter they describe.
//!
//! serde_html_form (through axum-extra's `Query`) splits the query string; [`ApiQuery`] turns
//! its rejections into the API's JSON error. Unknown parameters are refused
//! (`deny_unknown_fields`): a misspelt filter would otherwise silently match everything.
//! Every parameter is read as a list of raw strings so that a repeated one and an empty one
//! (`limit=`) are refused with a clear message, as `openapi.yaml` says, rather than dropped.
//! Only `q=` may be empty (it means no text filter, as an HTML form sends it).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use lpcmon_protocol::ProducerKind;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::kind::{Kind, PRODUCER_KINDS};
use crate::store::StoredEvent;

pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

/// axum-extra's `Query`, answering a malformed or unknown parameter with our JSON 400.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum_extra::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|rejection| ApiError::bad_request(rejection.body_text()))
    }
}

/// Parses a decimal id or count: ASCII digits only. `u64::from_str` also takes a leading `+`,
/// which the contract does not allow.
pub fn parse_decimal<T: std::str::FromStr>(text: &str) -> Option<T> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ProducerMatch {
    Kind(ProducerKind),
    /// Lowercase hex digits the instance starts with.
    Instance(String),
}

/// Which events a request wants. Different parameters must all match; several kinds are
/// alternatives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    kinds: Vec<Kind>,
    pid: Option<u32>,
    producer: Option<ProducerMatch>,
    /// Lowercased, matched against the lowercased search text.
    q: Option<String>,
    /// The event's host (`origin.host`, or this server's `--host-name`), exactly.
    host: Option<String>,
}

impl Filter {
    pub fn matches(&self, event: &StoredEvent) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&event.kind))
            && self.pid.is_none_or(|pid| event.pid == Some(pid))
            && match &self.producer {
                None => true,
                Some(ProducerMatch::Kind(k)) => event.producer.as_ref().is_some_and(|p| p.kind == *k),
                Some(ProducerMatch::Instance(prefix)) => event
                    .producer
                    .as_ref()
                    .is_some_and(|p| p.instance_hex.starts_with(prefix)),
            }
            && self
                .host
                .as_deref()
                .is_none_or(|h| event.host.as_deref() == Some(h))
            && self.q.as_deref().is_none_or(|q| event.search.contains(q))
    }

    /// The same filter for the durable store's queries.
    /// The same filter for the database, where this server's own events (host `own_host`)
    /// have no host of their own.
    pub fn to_store(&self, own_host: Option<&str>) -> lpcmon_store::Filter {
        let (producer_kind, producer_prefix) = match &self.producer {
            None => (None, None),
            Some(ProducerMatch::Kind(k)) => (Some(k.name().to_owned()), None),
            Some(ProducerMatch::Instance(prefix)) => (None, Some(prefix.clone())),
        };
        lpcmon_store::Filter {
            kinds: self.kinds.iter().map(|k| k.name().to_owned()).collect(),
            pid: self.pid,
            producer_kind,
            producer_prefix,
            q: self.q.clone(),
            host: self.host.as_ref().map(|h| {
                if Some(h.as_str()) == own_host {
                    lpcmon_store::HostFilter::Own
                } else {
                    lpcmon_store::HostFilter::Origin(h.clone())
                }
            }),
        }
    }
}

/// The raw parameters of `GET /events` and `GET /events/stream`, as serde_html_form splits
/// them. One struct for both routes: `limit` belongs only to the page and `token` only to
/// the stream (the auth layer reads it), which the conversions below enforce.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryParams {
    #[serde(default)]
    after: Vec<String>,
    #[serde(default)]
    limit: Vec<String>,
    #[serde(default)]
    kind: Vec<String>,
    #[serde(default)]
    pid: Vec<String>,
    #[serde(default)]
    producer: Vec<String>,
    #[serde(default)]
    q: Vec<String>,
    #[serde(default)]
    host: Vec<String>,
    #[serde(default)]
    token: Vec<String>,
}

/// `GET /events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsQuery {
    pub after: Option<u64>,
    pub limit: usize,
    pub filter: Filter,
}

/// `GET /events/stream`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamQuery {
    pub after: Option<u64>,
    pub filter: Filter,
}

impl TryFrom<QueryParams> for EventsQuery {
    type Error = ApiError;

    fn try_from(p: QueryParams) -> Result<Self, ApiError> {
        if !p.token.is_empty() {
            return Err(ApiError::bad_request(
                "unknown query parameter `token`: only /events/stream takes it; send \
                 `Authorization: Bearer` here",
            ));
        }
        let limit = match single("limit", &p.limit)? {
            None => DEFAULT_LIMIT,
            Some(text) => {
                let limit: usize = number("limit", text)?;
                if !(1..=MAX_LIMIT).contains(&limit) {
                    return Err(ApiError::bad_request(format!(
                        "`limit` must be between 1 and {MAX_LIMIT}, not {limit}"
                    )));
                }
                limit
            }
        };
        Ok(EventsQuery {
            after: optional_number("after", &p.after)?,
            limit,
            filter: filter(&p.kind, &p.pid, &p.producer, &p.q, &p.host)?,
        })
    }
}

impl TryFrom<QueryParams> for StreamQuery {
    type Error = ApiError;

    fn try_from(p: QueryParams) -> Result<Self, ApiError> {
        if !p.limit.is_empty() {
            return Err(ApiError::bad_request(
                "unknown query parameter `limit`: a stream has no page size",
            ));
        }
        Ok(StreamQuery {
            after: optional_number("after", &p.after)?,
            filter: filter(&p.kind, &p.pid, &p.producer, &p.q, &p.host)?,
        })
    }
}

/// The one value of a parameter that may be given at most once, and never empty.
fn single<'a>(name: &str, values: &'a [String]) -> Result<Option<&'a str>, ApiError> {
    match values {
        [] => Ok(None),
        [value] if value.is_empty() => Err(ApiError::bad_request(format!(
            "`{name}` is empty: give a value or leave the parameter out"
        ))),
        [value] => Ok(Some(value)),
        _ => Err(ApiError::bad_request(format!("`{name}` is given more than once"))),
    }
}

fn number<T: std::str::FromStr>(name: &str, text: &str) -> Result<T, ApiError> {
    parse_decimal(text).ok_or_else(|| {
        ApiError::bad_request(format!(
            "`{name}` must be a non-negative decimal integer in range, not {text:?}"
        ))
    })
}

fn optional_number<T: std::str::FromStr>(name: &str, values: &[String]) -> Result<Option<T>, ApiError> {
    single(name, values)?.map(|text| number(name, text)).transpose()
}

fn kind_names() -> String {
    Kind::all().map(Kind::name).collect::<Vec<_>>().join(", ")
}

fn producer_match(value: &str) -> Result<ProducerMatch, ApiError> {
    if let Some(kind) = PRODUCER_KINDS.into_iter().find(|k| k.name() == value) {
        return Ok(ProducerMatch::Kind(kind));
    }
    if (1..=32).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(ProducerMatch::Instance(value.to_ascii_lowercase()));
    }
    Err(ApiError::bad_request(format!(
        "`producer` must be a producer kind ({}) or 1 to 32 hex digits of an instance, not {value:?}",
        PRODUCER_KINDS.map(ProducerKind::name).join(", ")
    )))
}

/// Every `kind` value is a comma list of kind names, with no blanks.
fn kinds(values: &[String]) -> Result<Vec<Kind>, ApiError> {
    let mut kinds = Vec::new();
    for item in values.iter().flat_map(|v| v.split(',')) {
        let kind = Kind::parse(item).ok_or_else(|| {
            ApiError::bad_request(format!("unknown kind {item:?}; known kinds: {}", kind_names()))
        })?;
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    Ok(kinds)
}

fn filter(
    kind: &[String],
    pid: &[String],
    producer: &[String],
    q: &[String],
    host: &[String],
) -> Result<Filter, ApiError> {
    let q = match q {
        [] => None,
        [text] if text.is_empty() => None,
        [text] => Some(text.to_lowercase()),
        _ => return Err(ApiError::bad_request("`q` is given more than once")),
    };
    Ok(Filter {
        kinds: kinds(kind)?,
        pid: optional_number("pid", pid)?,
        producer: single("producer", producer)?.map(producer_match).transpose()?,
        q,
        host: single("host", host)?.map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lpcmon_protocol::EventKind;

    fn events(raw: &str) -> Result<EventsQuery, ApiError> {
        let params: QueryParams =
            serde_html_form::from_str(raw).map_err(|e| ApiError::bad_request(e.to_string()))?;
        EventsQuery::try_from(params)
    }

    fn bad(raw: &str) -> String {
        match events(raw) {
            Err(ApiError::BadRequest(m)) => m,
            other => panic!("{raw}: expected a bad request, got {other:?}"),
        }
    }

    #[test]
    fn parses_every_parameter() {
        let q =
            events("after=5&limit=7&kind=process.exec,loss&kind=process.exec&pid=9&producer=ABc&q=Bin%2FT")
                .unwrap();
        assert_eq!(q.after, Some(5));
        assert_eq!(q.limit, 7);
        assert_eq!(
            events("host=web-1").unwrap().filter.host.as_deref(),
            Some("web-1")
        );
        assert!(bad("host=a&host=b").contains("more than once"));
        assert_eq!(
            q.filter.kinds,
            vec![Kind::Event(EventKind::ProcessExec), Kind::Loss]
        );
        assert_eq!(q.filter.pid, Some(9));
        assert_eq!(q.filter.producer, Some(ProducerMatch::Instance("abc".into())));
        assert_eq!(q.filter.q.as_deref(), Some("bin/t"));
        assert_eq!(events("").unwrap().limit, DEFAULT_LIMIT);
        assert_eq!(events("q=").unwrap().filter, Filter::default());
    }

    #[test]
    fn rejects_bad_values() {
        assert!(bad("limit=0").contains("between 1 and 1000"));
        assert!(bad("limit=1001").contains("between"));
        assert!(bad("after=abc").contains("after"));
        assert!(bad("after=-1").contains("after"));
        assert!(bad("kind=nope").contains("known kinds"));
        assert!(bad("pid=1&pid=2").contains("more than once"));
        assert!(bad("producer=zz").contains("producer kind"));
        assert!(bad("kinds=loss").contains("unknown field"));
        assert!(bad("token=x").contains("unknown query parameter `token`"));
    }

    /// Finding 11 (a leading `+`) and finding 12 (an empty `limit=` accepted).
    #[test]
    fn refuses_plus_signs_and_empty_values() {
        assert!(bad("after=+5").contains("after"));
        assert!(bad("pid=+5").contains("pid"));
        assert!(bad("limit=+5").contains("limit"));
        assert!(bad("limit=").contains("empty"));
        assert!(bad("after=").contains("empty"));
        assert!(bad("kind=").contains("unknown kind"));
        assert!(bad("kind=loss,").contains("unknown kind"));
        assert!(bad("kind=%20loss").contains("unknown kind"));
        assert!(bad("producer=").contains("empty"));
        assert!(bad("after=18446744073709551616").contains("after"));
        assert_eq!(parse_decimal::<u64>("+1"), None);
        assert_eq!(parse_decimal::<u64>("18446744073709551615"), Some(u64::MAX));
    }

    #[test]
    fn stream_takes_a_token_but_no_limit() {
        let stream = |raw: &str| {
            serde_html_form::from_str::<QueryParams>(raw)
                .map_err(|e| e.to_string())
                .and_then(|p| StreamQuery::try_from(p).map_err(|e| e.to_string()))
        };
        assert_eq!(stream("token=x&after=3").unwrap().after, Some(3));
        assert!(
            stream("limit=3")
                .unwrap_err()
                .contains("unknown query parameter `limit`")
        );
    }
}
