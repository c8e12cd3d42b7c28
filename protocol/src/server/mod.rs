//! The port server's protocol logic: one [`Server`] owns every connection's session.
//!
//! A port backend (Unix SEQPACKET, Windows ALPC, legacy LPC) turns whatever its OS gives it into
//! a `PORT_MESSAGE` header plus data, and calls [`Server::handle`]. The server validates the
//! handshake, reassembles fragments, follows each producer instance's sequence numbers and
//! accounts for every lost event. It returns an [`Action`] for the backend to carry out (accept
//! or refuse a connection, reply to a request, close) and pushes [`Output`]s: the events and
//! losses the rest of lpcmon stores.
//!
//! Between the server and the rest of lpcmon stands the [`IngestGate`]: what a full ingest
//! channel means for each kind of output, and the `server_ingest` loss it counts.
//!
//! Sequence state is kept per producer *instance*, not per connection, so a gap across a
//! reconnect is seen, and a producer's own report of what it lost while disconnected is matched
//! against it instead of being counted twice.

mod ingest_budget;
mod ingest_gate;
mod peer_text;
mod reassembly;
mod sequence;
mod session;

pub use ingest_budget::{IngestBudget, heap_block};
pub use ingest_gate::{DEFAULT_BACKLOG_LIMIT, GateReport, IngestGate, IngestSink};
pub use peer_text::escape_peer_text;
pub use session::{
    Action, ConnId, Output, ProducerInfo, RestoredInstance, Server, ServerConfig, TransportInfo,
};
