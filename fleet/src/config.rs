//! What the fleet flags say, and connecting to NATS with them.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::{Client, ConnectOptions, ServerAddr};

/// How to reach NATS. Secrets stay in files: only their paths are here, and `Debug` of the
/// connection never shows what is in them.
#[derive(Debug, Clone, Default)]
pub struct NatsOptions {
    /// `nats://HOST:PORT` (or `tls://`) of one or more servers of the cluster.
    pub servers: Vec<String>,
    /// A `.creds` file (user JWT and NKey seed).
    pub creds: Option<PathBuf>,
    /// CA certificates (PEM) that sign the servers' certificates; turns TLS on.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("`{0}` is not a NATS server address (nats://HOST:PORT): {1}")]
    BadServer(String, String),
    #[error("give at least one NATS server (nats://HOST:PORT)")]
    NoServer,
    #[error("--nats-tls-cert and --nats-tls-key go together: give both or neither")]
    HalfClientCert,
    #[error("cannot read the NATS credentials file {0}: {1}")]
    Creds(PathBuf, std::io::Error),
    #[error("cannot connect to NATS: {0}")]
    Connect(String),
}

impl NatsOptions {
    /// The server addresses, checked.
    pub fn addresses(&self) -> Result<Vec<ServerAddr>, ConfigError> {
        let servers: Vec<&str> = self
            .servers
            .iter()
            .flat_map(|s| s.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if servers.is_empty() {
            return Err(ConfigError::NoServer);
        }
        servers
            .into_iter()
            .map(|s| {
                s.parse::<ServerAddr>()
                    .map_err(|e| ConfigError::BadServer(s.to_owned(), e.to_string()))
            })
            .collect()
    }

    /// Checks what can be checked before connecting, so a bad flag stops `serve` at start.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.addresses()?;
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::HalfClientCert);
        }
        if let Some(creds) = &self.creds {
            std::fs::metadata(creds).map_err(|e| ConfigError::Creds(creds.clone(), e))?;
        }
        Ok(())
    }

    /// A client that connects in the background and reconnects for ever: NATS being down at
    /// start or later never fails the caller. `on_event` hears of disconnects, reconnects and
    /// slow consumers.
    pub async fn connect(
        &self,
        name: &str,
        on_event: impl Fn(async_nats::Event) + Send + Sync + 'static,
    ) -> Result<Client, ConfigError> {
        let mut options = ConnectOptions::new()
            .name(name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(5));
        if let Some(creds) = &self.creds {
            options = options
                .credentials_file(creds)
                .await
                .map_err(|e| ConfigError::Creds(creds.clone(), e))?;
        }
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            options = options
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        let on_event = std::sync::Arc::new(on_event);
        options = options.event_callback(move |event| {
            let on_event = on_event.clone();
            async move { on_event(event) }
        });
        options
            .connect(self.addresses()?)
            .await
            .map_err(|e| ConfigError::Connect(e.to_string()))
    }
}

/// The origin side.
#[derive(Debug, Clone)]
pub struct PublishConfig {
    pub nats: NatsOptions,
    pub stream: String,
    /// Replicas of the stream when the publisher creates it.
    pub replicas: usize,
    /// This server's host name, already a subject token ([`subject_token`]).
    pub host: String,
    /// Most publishes awaiting their acknowledgement.
    pub window: usize,
}

/// The central side.
#[derive(Debug, Clone)]
pub struct SubscribeConfig {
    pub nats: NatsOptions,
    pub stream: String,
    /// The durable consumer's name.
    pub consumer: String,
    /// This server's host name: with its server instance, what it never imports.
    pub host: String,
    /// Most messages fetched (and stored) at once.
    pub batch: usize,
}

/// A host name as one subject token: letters, digits, `-` and `_` kept, anything else
/// (including `.`, `*`, `>` and spaces, which would split or widen the subject) becomes `_`.
pub fn subject_token(host: &str) -> String {
    let token: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if token.is_empty() {
        "unknown".to_owned()
    } else {
        token
    }
}

/// This machine's name, for a missing `--host-name`.
pub fn machine_name() -> String {
    let name = if cfg!(windows) {
        std::env::var("COMPUTERNAME").ok()
    } else {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .ok()
    };
    name.map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_become_one_subject_token() {
        assert_eq!(subject_token("web-1.example.com"), "web-1_example_com");
        assert_eq!(subject_token("a b>*"), "a_b__");
        assert_eq!(subject_token(""), "unknown");
    }

    #[test]
    fn servers_are_checked() {
        let mut o = NatsOptions {
            servers: vec!["nats://127.0.0.1:4222,nats://127.0.0.1:4223".into()],
            ..NatsOptions::default()
        };
        assert_eq!(o.addresses().unwrap().len(), 2);
        o.servers = vec![" , ".into()];
        assert!(matches!(o.validate(), Err(ConfigError::NoServer)));
        o.servers = vec!["nats://127.0.0.1:4222".into()];
        o.tls_cert = Some("c.pem".into());
        assert!(matches!(o.validate(), Err(ConfigError::HalfClientCert)));
    }
}
