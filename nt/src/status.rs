//! NTSTATUS codes lpcmon names or acts on (ntstatus.h), and their names.
//!
//! `NTSTATUS` is a signed 32-bit `LONG`: the two top bits are the severity, so errors are
//! negative, and [`is_success`] (`NT_SUCCESS`) is "not negative". Informational codes such as
//! [`TIMEOUT`] are successes, which is why a wait's status must be compared by value.

/// `NTSTATUS`.
pub type NtStatus = i32;

/// Declares each code once, and from the same list the name lookup.
macro_rules! statuses {
    ($($(#[$doc:meta])* $name:ident = $value:literal;)*) => {
        $(
            $(#[$doc])*
            pub const $name: NtStatus = $value as NtStatus;
        )*

        /// Every code declared here, for tests and tables.
        pub const ALL: &[NtStatus] = &[$($name),*];

        /// The symbolic name (`STATUS_...`) of a code declared here.
        pub const fn name(status: NtStatus) -> Option<&'static str> {
            match status {
                $($name => Some(concat!("STATUS_", stringify!($name))),)*
                _ => None,
            }
        }
    };
}

statuses! {
    SUCCESS = 0x0000_0000_u32;
    /// A user APC was delivered during an alertable wait.
    USER_APC = 0x0000_00C0_u32;
    ALERTED = 0x0000_0101_u32;
    /// A success code: a wait or connect ran out of time.
    TIMEOUT = 0x0000_0102_u32;
    BUFFER_OVERFLOW = 0x8000_0005_u32;
    NOT_IMPLEMENTED = 0xC000_0002_u32;
    INVALID_INFO_CLASS = 0xC000_0003_u32;
    INVALID_HANDLE = 0xC000_0008_u32;
    INVALID_CID = 0xC000_000B_u32;
    INVALID_PARAMETER = 0xC000_000D_u32;
    NO_MEMORY = 0xC000_0017_u32;
    ACCESS_DENIED = 0xC000_0022_u32;
    BUFFER_TOO_SMALL = 0xC000_0023_u32;
    OBJECT_TYPE_MISMATCH = 0xC000_0024_u32;
    PORT_MESSAGE_TOO_LONG = 0xC000_002F_u32;
    OBJECT_NAME_INVALID = 0xC000_0033_u32;
    OBJECT_NAME_NOT_FOUND = 0xC000_0034_u32;
    OBJECT_NAME_COLLISION = 0xC000_0035_u32;
    PORT_DISCONNECTED = 0xC000_0037_u32;
    OBJECT_PATH_INVALID = 0xC000_0039_u32;
    OBJECT_PATH_NOT_FOUND = 0xC000_003A_u32;
    OBJECT_PATH_SYNTAX_BAD = 0xC000_003B_u32;
    PORT_CONNECTION_REFUSED = 0xC000_0041_u32;
    INVALID_PORT_HANDLE = 0xC000_0042_u32;
    QUOTA_EXCEEDED = 0xC000_0044_u32;
    THREAD_IS_TERMINATING = 0xC000_004B_u32;
    PRIVILEGE_NOT_HELD = 0xC000_0061_u32;
    PROCEDURE_NOT_FOUND = 0xC000_007A_u32;
    INSUFFICIENT_RESOURCES = 0xC000_009A_u32;
    NOT_SUPPORTED = 0xC000_00BB_u32;
    CANCELLED = 0xC000_0120_u32;
    REPLY_MESSAGE_MISMATCH = 0xC000_021F_u32;
    LPC_REPLY_LOST = 0xC000_0253_u32;
    SERVER_SID_MISMATCH = 0xC000_02A0_u32;
    PORT_CLOSED = 0xC000_0700_u32;
    MESSAGE_LOST = 0xC000_0701_u32;
    INVALID_MESSAGE = 0xC000_0702_u32;
    REQUEST_CANCELED = 0xC000_0703_u32;
    LPC_RECEIVE_BUFFER_EXPECTED = 0xC000_0705_u32;
    LPC_INVALID_CONNECTION_USAGE = 0xC000_0706_u32;
    LPC_REQUESTS_NOT_ALLOWED = 0xC000_0707_u32;
}

/// `NT_SUCCESS`: success and informational codes (including [`TIMEOUT`]) are not negative.
pub const fn is_success(status: NtStatus) -> bool {
    status >= 0
}

/// A status for a log line or an error: `0xC0000022 (STATUS_ACCESS_DENIED)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Display(pub NtStatus);

impl core::fmt::Display for Display {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{:#010X} ({})",
            self.0 as u32,
            name(self.0).unwrap_or("unknown NTSTATUS")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_found() {
        for (i, a) in ALL.iter().enumerate() {
            assert!(name(*a).is_some());
            assert!(ALL[i + 1..].iter().all(|b| b != a), "{a:#x} declared twice");
        }
        assert_eq!(name(ACCESS_DENIED), Some("STATUS_ACCESS_DENIED"));
        assert_eq!(name(0x1234), None);
    }

    #[test]
    fn severity_is_the_sign() {
        assert!(is_success(SUCCESS) && is_success(TIMEOUT) && is_success(ALERTED));
        assert!(!is_success(BUFFER_OVERFLOW) && !is_success(PORT_CONNECTION_REFUSED));
        assert_eq!(ACCESS_DENIED as u32, 0xC000_0022);
    }

    #[test]
    fn display_gives_hex_and_name() {
        extern crate std;
        use std::string::ToString;
        assert_eq!(
            Display(SERVER_SID_MISMATCH).to_string(),
            "0xC00002A0 (STATUS_SERVER_SID_MISMATCH)"
        );
        assert_eq!(Display(0x7).to_string(), "0x00000007 (unknown NTSTATUS)");
    }
}
