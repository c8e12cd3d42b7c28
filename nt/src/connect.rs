//! What a connect call's NTSTATUS means: the one decision every lpcmon client makes with it.
//!
//! `ZwAlpcConnectPort` / `ZwSecureConnectPort` / `ZwConnectPort` in the driver and their `Nt*`
//! forms in the user-mode clients return the same codes; each client turns the outcome into its
//! own type (the driver's producer `ConnectFailure`, the user-mode `PortError`) but the meaning
//! of a status is decided here only.
//!
//! Decisions, from the sources (docs/windows.md, "Connecting"):
//! - `STATUS_ACCESS_DENIED` is a **refusal**. The object manager returns it when the port's
//!   security descriptor does not grant the caller `PORT_CONNECT` (ReactOS `connect.c` opens
//!   the port by name with that access): the port exists and its owner's policy says no, which
//!   retrying at the normal pace does not change. (Kernel-mode callers skip the access check,
//!   so the driver should never see it.)
//! - `STATUS_PORT_CONNECTION_REFUSED`: the server answered and refused.
//! - `STATUS_SERVER_SID_MISMATCH`: a port of that name exists but its creator is not the
//!   required server (a squatter): refused, never accepted.
//! - `STATUS_TIMEOUT` is a success code (`NT_SUCCESS` is true), so it is tested by value:
//!   the server did not answer in time.
//! - No server (`OBJECT_NAME_NOT_FOUND`, `OBJECT_PATH_NOT_FOUND`), a closing port and every
//!   other error: unavailable for now; back off and retry.

use crate::status::{self, NtStatus};

/// The meaning of a connect call's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectStatus {
    /// The server accepted; its answer is in the connection information.
    Connected,
    /// The server, or the port's security, refused this client. The kernel copies no
    /// connection information back on a refusal, so there is no reason to read.
    Refused,
    /// The server did not answer within the connect timeout.
    TimedOut,
    /// No port of that name: the server is not running.
    NotFound,
    /// Anything else: transient or unexplained.
    Unavailable,
}

impl ConnectStatus {
    /// Decides what a connect call's status means.
    pub const fn of(status: NtStatus) -> ConnectStatus {
        match status {
            status::SUCCESS => ConnectStatus::Connected,
            status::TIMEOUT => ConnectStatus::TimedOut,
            status::PORT_CONNECTION_REFUSED | status::SERVER_SID_MISMATCH | status::ACCESS_DENIED => {
                ConnectStatus::Refused
            }
            status::OBJECT_NAME_NOT_FOUND | status::OBJECT_PATH_NOT_FOUND => ConnectStatus::NotFound,
            _ => ConnectStatus::Unavailable,
        }
    }

    /// Why a refusal came from the kernel rather than the server, when it did.
    pub const fn refusal_cause(status: NtStatus) -> Option<&'static str> {
        match status {
            status::SERVER_SID_MISMATCH => Some("the port's creator is not LocalSystem (possible squatter)"),
            status::ACCESS_DENIED => Some("the port's security descriptor does not admit this account"),
            status::PORT_CONNECTION_REFUSED => Some("the server refused the connection"),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_has_one_meaning() {
        use ConnectStatus::*;
        let table = [
            (status::SUCCESS, Connected),
            (status::TIMEOUT, TimedOut),
            (status::PORT_CONNECTION_REFUSED, Refused),
            (status::SERVER_SID_MISMATCH, Refused),
            (status::ACCESS_DENIED, Refused),
            (status::OBJECT_NAME_NOT_FOUND, NotFound),
            (status::OBJECT_PATH_NOT_FOUND, NotFound),
            (status::PORT_DISCONNECTED, Unavailable),
            (status::NO_MEMORY, Unavailable),
            (status::NOT_IMPLEMENTED, Unavailable),
        ];
        for (st, meaning) in table {
            assert_eq!(ConnectStatus::of(st), meaning, "{}", status::Display(st));
        }
        // Every refusal says why; nothing else claims to be one.
        for st in status::ALL.iter().copied() {
            assert_eq!(
                ConnectStatus::of(st) == Refused,
                ConnectStatus::refusal_cause(st).is_some(),
                "{}",
                status::Display(st)
            );
        }
    }
}
