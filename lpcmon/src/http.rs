//! The HTTP side of `lpcmon status` and `lpcmon tail`: one client, the server's address and
//! its token, and errors that say whether the server was there at all.

use std::time::Duration;

use anyhow::Context;
use reqwest::{RequestBuilder, Response, StatusCode};

use crate::cli::ServerUrl;
use crate::exit::{Advise, Kind, fail};

/// A running lpcmon server, as seen from the command line.
pub struct Server {
    client: reqwest::Client,
    /// The base URL, without a trailing slash.
    pub base: String,
    token: Option<String>,
}

impl Server {
    pub fn new(args: &ServerUrl) -> anyhow::Result<Self> {
        let base = args.url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(fail(
                Kind::Usage,
                format!("--url {base:?} is not an http:// address"),
                "write it like http://127.0.0.1:7878",
            ));
        }
        let token = match (&args.token, &args.token_file) {
            (Some(token), _) => Some(token.clone()),
            (None, Some(path)) => Some(read_token(path)?),
            (None, None) => None,
        };
        // Only connecting is bounded here: a stream is meant to stay open.
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(Server { client, base, token })
    }

    pub fn get(&self, path: &str) -> RequestBuilder {
        self.get_with(path, &[])
    }

    /// GET `path` with query parameters (encoded here).
    pub fn get_with(&self, path: &str, query: &[(&str, String)]) -> RequestBuilder {
        let url = format!("{}{path}", self.base);
        let request = match reqwest::Url::parse_with_params(&url, query) {
            Ok(url) if !query.is_empty() => self.client.get(url),
            // No query (or a bad URL, which reqwest reports when the request is sent).
            _ => self.client.get(url),
        };
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends `request` and checks the status, turning failures into errors with remedies.
    pub async fn send(&self, request: RequestBuilder) -> anyhow::Result<Response> {
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        match response.status() {
            s if s.is_success() => Ok(response),
            StatusCode::UNAUTHORIZED => Err(fail(
                Kind::Runtime,
                format!(
                    "{} requires a token, and {}",
                    self.base,
                    if self.token.is_some() {
                        "the one given was refused"
                    } else {
                        "none was given"
                    }
                ),
                "pass the server's token with --token-file PATH or in LPCMON_TOKEN",
            )),
            StatusCode::BAD_REQUEST => {
                let body = response.text().await.unwrap_or_default();
                Err(fail(
                    Kind::Usage,
                    format!("{} refused the request: {}", self.base, body.trim()),
                    "check the filter flags (`lpcmon tail --help`)",
                ))
            }
            s => {
                let body = response.text().await.unwrap_or_default();
                Err(fail(
                    Kind::Runtime,
                    format!("{} answered {s}: {}", self.base, body.trim()),
                    "check that --url points at an lpcmon server of this version",
                ))
            }
        }
    }

    /// GET `path` as JSON.
    pub async fn json<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let response = self.send(self.get(path).timeout(Duration::from_secs(10))).await?;
        let body = response.bytes().await.map_err(|e| self.unreachable(e))?;
        serde_json::from_slice(&body)
            .with_context(|| format!("{}{path} is not the JSON lpcmon serves", self.base))
            .advise(
                Kind::Runtime,
                "check that --url points at an lpcmon server of this version",
            )
    }

    /// The error for a request that never got an answer.
    pub fn unreachable(&self, err: reqwest::Error) -> anyhow::Error {
        let kind = if err.is_connect() || err.is_timeout() {
            Kind::Connect
        } else {
            Kind::Runtime
        };
        Err::<(), _>(anyhow::Error::from(err).context(format!("cannot reach {}", self.base)))
            .advise(
                kind,
                "is `lpcmon serve` running there? start it, or point --url at it",
            )
            .unwrap_err()
    }
}

fn read_token(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the token file {}", path.display()))
        .advise(Kind::Usage, "pass a readable file with --token-file")?;
    let token = text.lines().next().unwrap_or_default().trim().to_owned();
    if token.is_empty() {
        return Err(fail(
            Kind::Usage,
            format!("the token file {} is empty", path.display()),
            "write the server's token on its first line",
        ));
    }
    Ok(token)
}
