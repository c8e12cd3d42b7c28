//! `serve --publish/--subscribe`: the fleet flags turned into lpcmon-fleet's tasks.

#[cfg(not(windows))]
use std::sync::Arc;

use lpcmon_api::AppState;
#[cfg(not(windows))]
use lpcmon_fleet::{NatsOptions, PublishConfig, SubscribeConfig};
use tokio::task::JoinHandle;

use crate::cli::FleetArgs;
use crate::exit::{Kind, fail};

/// Windows: lpcmon-fleet is not built there yet (see its crate doc), so the flags are refused.
#[cfg(windows)]
pub struct FleetPlan {
    pub host: String,
}

#[cfg(windows)]
impl FleetPlan {
    pub fn from_args(args: &FleetArgs) -> anyhow::Result<Option<FleetPlan>> {
        if args.publish.is_none() && args.subscribe.is_none() {
            return Ok(None);
        }
        Err(fail(
            Kind::Usage,
            "--publish and --subscribe are not in this Windows build yet",
            "run the fleet's servers on Linux for now",
        ))
    }

    pub fn start(self, _state: &AppState) -> anyhow::Result<Vec<JoinHandle<()>>> {
        Ok(Vec::new())
    }
}

#[cfg(not(windows))]
/// What the fleet flags ask for; `None` from [`FleetPlan::from_args`] when neither
/// `--publish` nor `--subscribe` is given.
pub struct FleetPlan {
    /// This server's host name, as a subject token.
    pub host: String,
    args: FleetArgs,
}

#[cfg(not(windows))]
impl FleetPlan {
    pub fn from_args(args: &FleetArgs) -> anyhow::Result<Option<FleetPlan>> {
        if args.publish.is_none() && args.subscribe.is_none() {
            return Ok(None);
        }
        for urls in [&args.publish, &args.subscribe].into_iter().flatten() {
            // A password in the URL would be on the command line and in logs.
            if urls.split(',').any(|u| {
                u.split("://")
                    .nth(1)
                    .unwrap_or(u)
                    .split('/')
                    .next()
                    .is_some_and(|a| a.contains('@'))
            }) {
                return Err(fail(
                    Kind::Usage,
                    "a NATS URL with credentials in it (user:password@) would be visible on the command line",
                    "put the credentials in a .creds file and give --nats-creds FILE",
                ));
            }
            nats(args, urls)
                .validate()
                .map_err(|e| fail(Kind::Usage, e, "see `lpcmon serve --help`"))?;
        }
        let name = args
            .host_name
            .clone()
            .unwrap_or_else(lpcmon_fleet::config::machine_name);
        let host = lpcmon_fleet::subject_token(&name);
        if host != name {
            tracing::info!(given = %name, host = %host, "the host name as a subject token");
        }
        Ok(Some(FleetPlan {
            host,
            args: args.clone(),
        }))
    }

    /// Starts the publisher and the subscriber the flags ask for.
    pub fn start(self, state: &AppState) -> anyhow::Result<Vec<JoinHandle<()>>> {
        let a = &self.args;
        let mut tasks = Vec::new();
        if let Some(urls) = &a.publish {
            tracing::info!(host = %self.host, stream = %a.nats_stream, "publishing events to NATS");
            tasks.push(lpcmon_fleet::spawn_publisher(
                state.clone(),
                Arc::new(state.clone()),
                PublishConfig {
                    nats: nats(a, urls),
                    stream: a.nats_stream.clone(),
                    replicas: a.nats_replicas.into(),
                    host: self.host.clone(),
                    window: a.nats_window as usize,
                },
            ));
        }
        if let Some(urls) = &a.subscribe {
            tracing::info!(stream = %a.nats_stream, consumer = %a.nats_consumer, "importing events from NATS");
            tasks.push(lpcmon_fleet::spawn_subscriber(
                state.clone(),
                SubscribeConfig {
                    nats: nats(a, urls),
                    stream: a.nats_stream.clone(),
                    consumer: a.nats_consumer.clone(),
                    host: self.host.clone(),
                    batch: 512,
                },
            ));
        }
        Ok(tasks)
    }
}

#[cfg(not(windows))]
fn nats(a: &FleetArgs, urls: &str) -> NatsOptions {
    NatsOptions {
        servers: vec![urls.to_owned()],
        creds: a.nats_creds.clone(),
        tls_ca: a.nats_tls_ca.clone(),
        tls_cert: a.nats_tls_cert.clone(),
        tls_key: a.nats_tls_key.clone(),
    }
}
