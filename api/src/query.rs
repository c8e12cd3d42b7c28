//! Query parameters of `/events` and `/events/stream`, and the event filter they describe.
//!
//! Parsed by hand from the raw query string so every mistake gets the API's JSON error. An
//! unknown parameter is an error too: a misspelt filter would otherwise silently match
//! everything. An empty value (`q=`) counts as leaving the parameter out, as HTML forms send.

use lpcmon_protocol::ProducerKind;

use crate::error::ApiError;
use crate::kind::{Kind, PRODUCER_KINDS};
use crate::store::StoredEvent;

pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

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
}

impl Filter {
    pub fn matches(&self, event: &StoredEvent) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&event.kind))
            && self.pid.is_none_or(|pid| event.pid == Some(pid))
            && match &self.producer {
                None => true,
                Some(ProducerMatch::Kind(k)) => event.producer.kind == *k,
                Some(ProducerMatch::Instance(prefix)) => event.producer.instance_hex.starts_with(prefix),
            }
            && self.q.as_deref().is_none_or(|q| event.search.contains(q))
    }

    /// The same filter for the durable store's queries.
    pub fn to_store(&self) -> lpcmon_store::Filter {
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
        }
    }
}

/// `GET /events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsQuery {
    pub after: Option<u64>,
    pub limit: usize,
    pub filter: Filter,
}

/// `GET /events/stream`. `token` is read by the auth layer and only skipped here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamQuery {
    pub after: Option<u64>,
    pub filter: Filter,
}

impl EventsQuery {
    pub fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let p = Parsed::parse(raw, Route::Events)?;
        Ok(EventsQuery {
            after: p.after,
            limit: p.limit.unwrap_or(DEFAULT_LIMIT),
            filter: p.filter,
        })
    }
}

impl StreamQuery {
    pub fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let p = Parsed::parse(raw, Route::Stream)?;
        Ok(StreamQuery {
            after: p.after,
            filter: p.filter,
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    Events,
    Stream,
}

#[derive(Default)]
struct Parsed {
    after: Option<u64>,
    limit: Option<usize>,
    filter: Filter,
}

fn once<T>(slot: &mut Option<T>, name: &str, value: T) -> Result<(), ApiError> {
    if slot.replace(value).is_some() {
        return Err(ApiError::bad_request(format!("`{name}` is given more than once")));
    }
    Ok(())
}

fn number<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, ApiError> {
    value
        .parse()
        .map_err(|_| ApiError::bad_request(format!("`{name}` must be a non-negative integer, not {value:?}")))
}

fn kind_names() -> String {
    Kind::all().map(Kind::name).collect::<Vec<_>>().join(", ")
}

fn producer_match(value: &str) -> Result<ProducerMatch, ApiError> {
    if let Some(kind) = PRODUCER_KINDS.into_iter().find(|k| k.name() == value) {
        return Ok(ProducerMatch::Kind(kind));
    }
    if value.len() <= 32 && value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(ProducerMatch::Instance(value.to_ascii_lowercase()));
    }
    Err(ApiError::bad_request(format!(
        "`producer` must be a producer kind ({}) or up to 32 hex digits of an instance, not {value:?}",
        PRODUCER_KINDS.map(ProducerKind::name).join(", ")
    )))
}

impl Parsed {
    fn parse(raw: Option<&str>, route: Route) -> Result<Self, ApiError> {
        let mut p = Parsed::default();
        for (name, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            let value = value.trim();
            if value.is_empty() {
                continue;
            }
            match &*name {
                "after" => once(&mut p.after, "after", number(&name, value)?)?,
                "limit" if route == Route::Events => {
                    let limit: usize = number(&name, value)?;
                    if !(1..=MAX_LIMIT).contains(&limit) {
                        return Err(ApiError::bad_request(format!(
                            "`limit` must be between 1 and {MAX_LIMIT}, not {limit}"
                        )));
                    }
                    once(&mut p.limit, "limit", limit)?;
                }
                "kind" => {
                    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                        let kind = Kind::parse(item).ok_or_else(|| {
                            ApiError::bad_request(format!(
                                "unknown kind {item:?}; known kinds: {}",
                                kind_names()
                            ))
                        })?;
                        if !p.filter.kinds.contains(&kind) {
                            p.filter.kinds.push(kind);
                        }
                    }
                }
                "pid" => once(&mut p.filter.pid, "pid", number(&name, value)?)?,
                "producer" => once(&mut p.filter.producer, "producer", producer_match(value)?)?,
                "q" => once(&mut p.filter.q, "q", value.to_lowercase())?,
                "token" if route == Route::Stream => {}
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unknown query parameter {other:?}"
                    )));
                }
            }
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lpcmon_protocol::EventKind;

    fn bad(raw: &str) -> String {
        match EventsQuery::parse(Some(raw)) {
            Err(ApiError::BadRequest(m)) => m,
            other => panic!("{raw}: expected a bad request, got {other:?}"),
        }
    }

    #[test]
    fn parses_every_parameter() {
        let q = EventsQuery::parse(Some(
            "after=5&limit=7&kind=process.exec,loss&kind=process.exec&pid=9&producer=ABc&q=Bin%2FT",
        ))
        .unwrap();
        assert_eq!(q.after, Some(5));
        assert_eq!(q.limit, 7);
        assert_eq!(
            q.filter.kinds,
            vec![Kind::Event(EventKind::ProcessExec), Kind::Loss]
        );
        assert_eq!(q.filter.pid, Some(9));
        assert_eq!(q.filter.producer, Some(ProducerMatch::Instance("abc".into())));
        assert_eq!(q.filter.q.as_deref(), Some("bin/t"));
        assert_eq!(EventsQuery::parse(None).unwrap().limit, DEFAULT_LIMIT);
        assert_eq!(
            EventsQuery::parse(Some("q=&kind=")).unwrap().filter,
            Filter::default()
        );
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
        assert!(bad("kinds=loss").contains("unknown query parameter"));
        assert!(bad("token=x").contains("unknown query parameter"));
        assert!(StreamQuery::parse(Some("token=x&after=3")).is_ok());
        assert!(StreamQuery::parse(Some("limit=3")).is_err());
    }
}
