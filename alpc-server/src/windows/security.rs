//! The port's security descriptor, built from SDDL (docs/windows.md, "Security").
//!
//! SYSTEM only (`D:P(A;;GA;;;SY)`), plus the built-in Administrators when the user-mode load
//! generator must connect. The DACL is protected so nothing is inherited into it. Kernel-mode
//! `ZwConnectPort` bypasses the DACL, so this keeps out user-mode impostors, not the driver.

use std::ffi::c_void;

use windows_sys::Win32::Foundation::LocalFree;
use windows_sys::Win32::Security::Authorization::{
    ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
};
use windows_sys::Win32::Security::PSECURITY_DESCRIPTOR;

use crate::decide::port_sddl;
use crate::error::PortError;

/// A self-relative security descriptor allocated by `ConvertStringSecurityDescriptorToSecurityDescriptorW`.
#[derive(Debug)]
pub struct SecurityDescriptor {
    descriptor: PSECURITY_DESCRIPTOR,
}

impl SecurityDescriptor {
    /// The descriptor lpcmon's port gets.
    pub fn for_port(allow_administrators: bool) -> Result<Self, PortError> {
        Self::from_sddl(port_sddl(allow_administrators))
    }

    pub fn from_sddl(sddl: &str) -> Result<Self, PortError> {
        let wide: Vec<u16> = sddl.encode_utf16().chain(std::iter::once(0)).collect();
        let mut descriptor: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
        // SAFETY: `wide` is NUL-terminated UTF-16 that outlives the call; `descriptor` is a
        // valid out pointer; the size out parameter is optional.
        let ok = unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                wide.as_ptr(),
                SDDL_REVISION_1,
                &mut descriptor,
                std::ptr::null_mut(),
            )
        };
        if ok == 0 || descriptor.is_null() {
            return Err(PortError::Io {
                call: "ConvertStringSecurityDescriptorToSecurityDescriptorW",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(SecurityDescriptor { descriptor })
    }

    /// The descriptor, for `OBJECT_ATTRIBUTES.SecurityDescriptor`; valid while `self` lives.
    /// The kernel copies it into the port object, so it may be dropped once the port exists.
    pub fn as_ptr(&self) -> *const c_void {
        self.descriptor
    }
}

impl Drop for SecurityDescriptor {
    fn drop(&mut self) {
        // SAFETY: the descriptor came from ConvertStringSecurityDescriptorToSecurityDescriptorW,
        // whose documentation says to free it with LocalFree, and is freed only here.
        unsafe { LocalFree(self.descriptor) };
    }
}
