//! Security as data: the LocalSystem SID, the port's security descriptor, and the security
//! quality of service every lpcmon connection asks for.

use core::mem::{align_of, offset_of, size_of};

/// A SID with one sub-authority, laid out as winnt.h's `SID` (12 bytes, 4-aligned).
#[repr(C, align(4))]
#[derive(Debug, PartialEq, Eq)]
pub struct Sid1 {
    pub revision: u8,
    pub sub_authority_count: u8,
    pub identifier_authority: [u8; 6],
    pub sub_authority: [u32; 1],
}

const _: () = {
    assert!(size_of::<Sid1>() == 12);
    assert!(offset_of!(Sid1, identifier_authority) == 2);
    assert!(offset_of!(Sid1, sub_authority) == 8);
};

/// S-1-5-18, LocalSystem: revision 1, one sub-authority, authority NT (5), sub-authority 18.
/// Passed as `RequiredServerSid`, it makes a connect fail with STATUS_SERVER_SID_MISMATCH
/// unless the port's creator runs as SYSTEM, so a port squatted under lpcmon's name gets
/// nothing.
pub static LOCAL_SYSTEM_SID: Sid1 = Sid1 {
    revision: 1,
    sub_authority_count: 1,
    identifier_authority: [0, 0, 0, 0, 0, 5],
    sub_authority: [18],
};

impl Sid1 {
    /// The `PSID` the connect calls take; they only read it.
    pub fn as_psid(&'static self) -> *mut core::ffi::c_void {
        core::ptr::from_ref(self).cast_mut().cast()
    }
}

/// The port's security descriptor in SDDL: a protected DACL (nothing inherited) granting
/// SYSTEM everything, plus the built-in Administrators when user-mode producers (the load
/// generator) must connect. Kernel-mode connects bypass the DACL; it keeps user-mode
/// impostors out.
pub const fn port_sddl(allow_administrators: bool) -> &'static str {
    if allow_administrators {
        "D:P(A;;GA;;;SY)(A;;GA;;;BA)"
    } else {
        "D:P(A;;GA;;;SY)"
    }
}

/// `SecurityIdentification` (winnt.h `SECURITY_IMPERSONATION_LEVEL`).
pub const SECURITY_IDENTIFICATION: i32 = 1;
/// `SECURITY_STATIC_TRACKING` (winnt.h).
pub const SECURITY_STATIC_TRACKING: u8 = 0;
/// `SECURITY_DYNAMIC_TRACKING` (winnt.h).
pub const SECURITY_DYNAMIC_TRACKING: u8 = 1;

/// `SECURITY_QUALITY_OF_SERVICE` (winnt.h): 12 bytes, 4-aligned; it sits at offset 4 of
/// `ALPC_PORT_ATTRIBUTES`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecurityQos {
    pub length: u32,
    pub impersonation_level: i32,
    pub context_tracking_mode: u8,
    pub effective_only: u8,
}

const _: () = {
    assert!(size_of::<SecurityQos>() == 12);
    assert!(align_of::<SecurityQos>() == 4);
    assert!(offset_of!(SecurityQos, impersonation_level) == 4);
    assert!(offset_of!(SecurityQos, context_tracking_mode) == 8);
    assert!(offset_of!(SecurityQos, effective_only) == 9);
};

impl SecurityQos {
    /// What every lpcmon port and client offers, the driver's and the user-mode ones alike
    /// (they used to differ, with no reason given):
    /// - **identification**: the server may learn who the client is, never act as it;
    /// - **static tracking**: the client's security context is captured once, at connect.
    ///   lpcmon decides who may produce only at connect time, so dynamic tracking (re-capturing
    ///   the context whenever the client's token changes) would cost work per message for
    ///   nothing (Microsoft's `SECURITY_QUALITY_OF_SERVICE` documentation);
    /// - **effective only**: the server sees only the enabled parts of the context, the least
    ///   it needs.
    pub const fn identification() -> Self {
        SecurityQos {
            length: size_of::<SecurityQos>() as u32,
            impersonation_level: SECURITY_IDENTIFICATION,
            context_tracking_mode: SECURITY_STATIC_TRACKING,
            effective_only: 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_system_is_s_1_5_18_in_bytes() {
        let sid = &LOCAL_SYSTEM_SID;
        assert_eq!((sid.revision, sid.sub_authority_count), (1, 1));
        assert_eq!(sid.identifier_authority, [0, 0, 0, 0, 0, 5]);
        assert_eq!(sid.sub_authority, [18]);
    }

    #[test]
    fn sddl_grants_system_and_optionally_administrators() {
        assert_eq!(port_sddl(false), "D:P(A;;GA;;;SY)");
        assert!(port_sddl(true).starts_with(port_sddl(false)));
        assert!(port_sddl(true).ends_with("(A;;GA;;;BA)"));
    }

    #[test]
    fn qos_is_identification_static_effective_only() {
        let q = SecurityQos::identification();
        assert_eq!((q.length, q.impersonation_level), (12, SECURITY_IDENTIFICATION));
        assert_eq!(
            (q.context_tracking_mode, q.effective_only),
            (SECURITY_STATIC_TRACKING, 1)
        );
    }
}
