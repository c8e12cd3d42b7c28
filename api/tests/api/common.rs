//! A real server on 127.0.0.1:0 fed through the real ingest channel, synthetic outputs, and
//! a small SSE reader. Every wait is bounded.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use lpcmon_api::{ApiConfig, AppState, spawn_ingest};
use lpcmon_protocol::event::{Event, EventHeader, EventKind, Field, FieldType, FieldValue};
use lpcmon_protocol::message::{Loss, LossStage, ProducerKind};
use lpcmon_protocol::server::{Output, ProducerInfo, TransportInfo};
use reqwest::header::HeaderMap;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

pub const WAIT: Duration = Duration::from_secs(10);

pub struct Server {
    pub base: String,
    pub state: AppState,
    pub client: reqwest::Client,
    tx: mpsc::Sender<Output>,
}

impl Server {
    pub async fn start(config: ApiConfig) -> Server {
        let state = AppState::new(config);
        let (tx, rx) = mpsc::channel(1024);
        spawn_ingest(state.clone(), rx);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(lpcmon_api::serve(listener, state.clone(), std::future::pending()));
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(WAIT)
            .build()
            .unwrap();
        Server {
            base,
            state,
            client,
            tx,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn send(&self, output: Output) {
        timeout(WAIT, self.tx.send(output)).await.unwrap().unwrap();
    }

    pub async fn send_all(&self, outputs: impl IntoIterator<Item = Output>) {
        for o in outputs {
            self.send(o).await;
        }
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        timeout(WAIT, self.client.get(self.url(path)).send())
            .await
            .unwrap()
            .unwrap()
    }

    /// Status and JSON body of a GET.
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = self.get(path).await;
        let status = response.status().as_u16();
        let text = timeout(WAIT, response.text()).await.unwrap().unwrap();
        let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}"));
        (status, json)
    }

    /// Waits until the store's newest id is at least `id`.
    pub async fn wait_stored(&self, id: u64) {
        let deadline = Instant::now() + WAIT;
        loop {
            let (_, stats) = self.get_json("/stats").await;
            if stats["store"]["newest_id"].as_u64().is_some_and(|n| n >= id) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "event {id} was not stored in time: {stats}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn sse(&self, path: &str, headers: &[(&str, &str)]) -> SseClient {
        let mut request = self.client.get(self.url(path));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = timeout(WAIT, request.send()).await.unwrap().unwrap();
        assert_eq!(response.status(), 200, "{path}");
        SseClient {
            headers: response.headers().clone(),
            body: Box::pin(response.bytes_stream()),
            buf: String::new(),
            chunks: 0,
        }
    }
}

pub fn producer(kind: ProducerKind, n: u8) -> Arc<ProducerInfo> {
    Arc::new(ProducerInfo {
        conn: u64::from(n),
        kind,
        instance: [n; 16],
        instance_hex: format!("{n:02x}").repeat(16),
        version: 1,
        os: "Linux 6.1".into(),
        os_build: 0,
        client_pid: 4242,
        max_message: 65536,
        connected_at: 0,
    })
}

pub fn text(ty: FieldType, s: &str) -> Field {
    Field {
        ty,
        value: FieldValue::Text(s.into()),
        original_len: None,
    }
}

pub fn number(ty: FieldType, bytes: &[u8]) -> Field {
    Field {
        ty,
        value: FieldValue::Bytes(bytes.to_vec()),
        original_len: None,
    }
}

pub fn event(p: &Arc<ProducerInfo>, seq: u64, kind: EventKind, pid: u32, fields: Vec<Field>) -> Output {
    Output::Event {
        producer: p.clone(),
        event: Event {
            header: EventHeader {
                seq,
                kind,
                flags: 0,
                time_ns: 1_763_805_600_123_456_789,
                pid,
                ppid: 1,
                tid: pid,
            },
            fields,
        },
        transport: TransportInfo {
            api: "unix",
            message_id: seq as u32,
            client_pid: p.client_pid,
            bytes: 200,
            fragments: 1,
        },
    }
}

pub fn exec(p: &Arc<ProducerInfo>, seq: u64, pid: u32, exe: &str, cmd: &str) -> Output {
    event(
        p,
        seq,
        EventKind::ProcessExec,
        pid,
        vec![
            text(FieldType::EXECUTABLE, exe),
            text(FieldType::COMMAND_LINE, cmd),
            text(FieldType::USER_ID, "1000"),
        ],
    )
}

pub fn exit(p: &Arc<ProducerInfo>, seq: u64, pid: u32, code: i32) -> Output {
    event(
        p,
        seq,
        EventKind::ProcessExit,
        pid,
        vec![number(FieldType::EXIT_CODE, &code.to_le_bytes())],
    )
}

pub fn loss(p: &Arc<ProducerInfo>, stage: LossStage, first: u64, last: u64) -> Output {
    Output::Loss {
        producer: p.clone(),
        loss: Loss {
            stage,
            count: last - first + 1,
            first_seq: first,
            last_seq: last,
            total: last - first + 1,
        },
    }
}

pub fn ids(page: &Value) -> Vec<u64> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect()
}

/// One SSE block: what its fields said.
#[derive(Debug, Default, Clone)]
pub struct Frame {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Option<String>,
    pub retry: Option<String>,
    pub comments: Vec<String>,
}

impl Frame {
    pub fn id(&self) -> u64 {
        self.id.as_deref().unwrap().parse().unwrap()
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(self.data.as_deref().unwrap()).unwrap()
    }
}

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

pub struct SseClient {
    pub headers: HeaderMap,
    body: Body,
    buf: String,
    /// Body chunks read so far: at most the number of writes the server made.
    pub chunks: u64,
}

impl SseClient {
    /// The next block (event, comment or retry), or `None` if none came within `wait`.
    pub async fn frame(&mut self, wait: Duration) -> Option<Frame> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                return Some(parse_block(&block));
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next()).await.ok()??;
            self.chunks += 1;
            self.buf.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        }
    }

    /// The next `event:`/`data:` block, skipping comments and `retry:`.
    pub async fn event(&mut self) -> Frame {
        loop {
            let frame = self.frame(WAIT).await.expect("no SSE event in time");
            if frame.data.is_some() {
                return frame;
            }
        }
    }
}

fn parse_block(block: &str) -> Frame {
    let mut f = Frame::default();
    for line in block.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix(':') {
            f.comments.push(comment.trim().to_owned());
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
        match field {
            "id" => f.id = Some(value),
            "event" => f.event = Some(value),
            "data" => f.data = Some(value),
            "retry" => f.retry = Some(value),
            other => panic!("unexpected SSE field {other:?}"),
        }
    }
    f
}
