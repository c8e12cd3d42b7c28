//! The stream: created if missing, refused (with the reason) if configured incompatibly.

use std::time::Duration;

use async_nats::jetstream::stream::{Config, RetentionPolicy, Stream};
use async_nats::jetstream::{self, context::GetStreamErrorKind};

/// Every subject the fleet publishes on.
pub const SUBJECTS: &str = "lpcmon.>";

/// How long JetStream remembers message ids to drop duplicates. Redeliveries older than this
/// are caught by the subscriber's high-water marks instead.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("NATS did not answer about stream {0}: {1}")]
    Unreachable(String, String),
    #[error("stream {0} is configured incompatibly: {1}")]
    Incompatible(String, String),
    #[error("cannot create stream {0}: {1}")]
    Create(String, String),
}

impl StreamError {
    /// Whether waiting for NATS might fix it (an incompatible stream needs an operator).
    pub fn is_transient(&self) -> bool {
        !matches!(self, StreamError::Incompatible(..))
    }
}

/// The configuration the publisher creates.
pub fn wanted(name: &str, replicas: usize) -> Config {
    Config {
        name: name.to_owned(),
        subjects: vec![SUBJECTS.to_owned()],
        num_replicas: replicas.max(1),
        duplicate_window: DUPLICATE_WINDOW,
        retention: RetentionPolicy::Limits,
        ..Config::default()
    }
}

/// Why an existing stream cannot carry the fleet, if it cannot.
pub fn incompatibility(config: &Config) -> Option<String> {
    if !config.subjects.iter().any(|s| s == SUBJECTS || s == ">") {
        return Some(format!(
            "its subjects {:?} do not include `{SUBJECTS}`: publishes to lpcmon.<host>.<kind> would \
             not be stored",
            config.subjects
        ));
    }
    if config.retention != RetentionPolicy::Limits {
        return Some(format!(
            "its retention is {:?}, not limits: a work-queue or interest stream deletes events \
             once one consumer has them",
            config.retention
        ));
    }
    if config.duplicate_window.is_zero() {
        return Some(
            "its duplicate window is 0: republished events after an outage would be stored twice".into(),
        );
    }
    if config.no_ack {
        return Some("it does not acknowledge publishes (no_ack), so delivery cannot be confirmed".into());
    }
    None
}

/// The stream, checked; created with `replicas` if `create` and it is missing.
pub async fn ensure(
    js: &jetstream::Context,
    name: &str,
    replicas: Option<usize>,
) -> Result<Option<Stream>, StreamError> {
    let stream = match js.get_stream(name).await {
        Ok(stream) => stream,
        Err(e) => {
            let missing = matches!(e.kind(), GetStreamErrorKind::JetStream(j)
                if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND);
            if !missing {
                return Err(StreamError::Unreachable(name.to_owned(), e.to_string()));
            }
            let Some(replicas) = replicas else {
                return Ok(None);
            };
            tracing::info!(stream = name, replicas, "creating the NATS stream");
            js.create_stream(wanted(name, replicas))
                .await
                .map_err(|e| StreamError::Create(name.to_owned(), e.to_string()))?
        }
    };
    match incompatibility(&stream.cached_info().config) {
        Some(why) => Err(StreamError::Incompatible(name.to_owned(), why)),
        None => Ok(Some(stream)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_we_create_is_compatible_and_others_are_refused_with_a_reason() {
        assert_eq!(incompatibility(&wanted("LPCMON", 3)), None);
        let c = Config {
            subjects: vec!["other.>".into()],
            ..wanted("X", 1)
        };
        assert!(incompatibility(&c).unwrap().contains("do not include"));
        let c = Config {
            retention: RetentionPolicy::WorkQueue,
            ..wanted("X", 1)
        };
        assert!(incompatibility(&c).unwrap().contains("retention"));
        let c = Config {
            duplicate_window: Duration::ZERO,
            ..wanted("X", 1)
        };
        assert!(incompatibility(&c).unwrap().contains("duplicate window"));
    }
}
