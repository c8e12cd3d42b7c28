//! NTSTATUS codes as the errors lpcmon reports. The codes and their names are `lpcmon_nt`'s.

pub use lpcmon_nt::status::*;
use lpcmon_nt::{ConnectStatus, status};

use crate::error::PortError;

/// A failed native call as a [`PortError`].
pub fn nt_error(call: &'static str, code: NtStatus) -> PortError {
    PortError::NtStatus {
        call,
        status: code as u32,
        name: status_name(code),
    }
}

/// The symbolic name of an NTSTATUS (`lpcmon_nt::status`), or `"unknown NTSTATUS"`.
pub fn status_name(code: NtStatus) -> &'static str {
    status::name(code).unwrap_or("unknown NTSTATUS")
}

/// A failed client call as the [`PortError`] a producer acts on: a missing port and a closed
/// connection get their own variants, since a producer backs off and reconnects on both.
pub fn client_error(call: &'static str, code: NtStatus, port: &str) -> PortError {
    match code {
        status::OBJECT_NAME_NOT_FOUND | status::OBJECT_PATH_NOT_FOUND => PortError::NotFound {
            port: port.to_owned(),
        },
        status::PORT_DISCONNECTED | status::PORT_CLOSED | status::INVALID_PORT_HANDLE => PortError::Closed,
        _ => nt_error(call, code),
    }
}

/// A connect call that did not succeed, as the [`PortError`] a producer acts on. What the
/// status means is `lpcmon_nt::ConnectStatus`'s decision, the one the driver makes too.
///
/// A refused connect returns no connection information (the kernel copies none back), so a
/// refusal carries the kernel's cause, never a reason read from the buffer.
pub fn connect_error(
    call: &'static str,
    code: NtStatus,
    port: &str,
    timeout: std::time::Duration,
) -> PortError {
    match ConnectStatus::of(code) {
        ConnectStatus::Refused => PortError::Refused {
            reason: status_name(code),
            text: ConnectStatus::refusal_cause(code)
                .unwrap_or("the connection was refused")
                .to_owned(),
        },
        ConnectStatus::TimedOut => PortError::Timeout(timeout),
        ConnectStatus::NotFound => PortError::NotFound {
            port: port.to_owned(),
        },
        // A success status is not an error; a caller that asks anyway gets it named.
        ConnectStatus::Connected | ConnectStatus::Unavailable => client_error(call, code, port),
    }
}
