//! Who and what the port servers allow: the port API, the port's name and security, and which
//! peers may produce.

use std::str::FromStr;

use lpcmon_nt::port_message::{LPC_LEGACY_MAX_DATA, PORT_MESSAGE_SIZE};
use lpcmon_nt::{PortName, PortNameError};

/// `ClientId.UniqueProcess` of the System process. A driver's system worker thread
/// (`PsCreateSystemThread` with a NULL process handle) connects with this id, and no user-mode
/// process can have it.
pub const SYSTEM_PROCESS_ID: u64 = 4;

/// The port the server creates unless told otherwise (`lpcmon_nt`'s, the one the driver uses).
pub use lpcmon_nt::port_name::DEFAULT_PORT_NAME;
/// The port's security descriptor in SDDL (`lpcmon_nt`'s).
pub use lpcmon_nt::security::port_sddl;

/// Which kernel port API the server uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PortApi {
    /// `NtAlpcCreatePort` with `ALPC_PORFLG_ALLOW_LPC_REQUESTS`, so legacy clients connect too.
    #[default]
    Alpc,
    /// `NtCreatePort`, for comparing the legacy path.
    Lpc,
}

impl PortApi {
    /// The name shown in `transport.api` and accepted by `--port-api`.
    pub fn name(self) -> &'static str {
        match self {
            PortApi::Alpc => "alpc",
            PortApi::Lpc => "lpc",
        }
    }

    /// The largest data a message may carry on this API, given the total message length the
    /// kernel allows (`AlpcMaxAllowedMessageLength()` for ALPC; ignored for legacy LPC, whose
    /// limit is fixed at 648 bytes in total on x64).
    pub fn data_limit(self, alpc_max_total: usize) -> usize {
        match self {
            PortApi::Alpc => alpc_max_total
                .min(usize::from(u16::MAX))
                .saturating_sub(PORT_MESSAGE_SIZE),
            PortApi::Lpc => LPC_LEGACY_MAX_DATA,
        }
    }
}

impl FromStr for PortApi {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "alpc" => Ok(PortApi::Alpc),
            "lpc" => Ok(PortApi::Lpc),
            other => Err(format!("unknown port API {other:?}: expected alpc or lpc")),
        }
    }
}

/// Checks a port name before the kernel sees it, with the rules the driver applies to its
/// registry value (`lpcmon_nt::PortName`): absolute, at most 256 characters, no NUL, not under
/// `\RPC Control` (which anyone may create objects in, so a squatter could be there first).
pub fn validate_port_name(name: &str) -> Result<(), PortNameError> {
    PortName::parse(name).map(|_| ())
}

/// Who may produce on this port, beyond what the security descriptor allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PeerPolicy {
    /// Accept connections from user-mode processes (the load generator, experiments).
    pub allow_user_mode_producers: bool,
}

/// A peer the policy lets in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// A system thread of the System process: the lpcmon driver.
    Driver,
    /// A user-mode process, allowed by policy.
    UserMode { pid: u64 },
}

/// Why [`classify_peer`] refuses a user-mode process.
pub const USER_MODE_REFUSED: &str = "user-mode producers are not allowed on this port";

/// Decides whether the process that sent a connection request may produce (docs/design.md, "Who may produce").
pub fn classify_peer(client_process: u64, policy: PeerPolicy) -> Result<Peer, &'static str> {
    if client_process == SYSTEM_PROCESS_ID {
        Ok(Peer::Driver)
    } else if policy.allow_user_mode_producers {
        Ok(Peer::UserMode { pid: client_process })
    } else {
        Err(USER_MODE_REFUSED)
    }
}
