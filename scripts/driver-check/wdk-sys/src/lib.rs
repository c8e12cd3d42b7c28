//! Stand-in for `wdk-sys`, used only by `scripts/check-driver.sh`.
//!
//! `bindings.rs` is bindgen's rendering of mingw-w64's `<ntddk.h>`, allow-listed to the names
//! `driver/src` uses, with wdk-sys's settings (`core` types, enums as module constants);
//! `status.rs` is every `STATUS_*` of mingw-w64's `ntstatus.h`. Both are written by the script.
//! The module layout follows wdk-sys 0.5: types and constants at the root, routines under
//! `ntddk`.
#![no_std]
#![allow(non_upper_case_globals, non_camel_case_types, non_snake_case, dead_code, improper_ctypes)]
// bindgen 0.60 writes `transmute` for integer casts newer lints flag; the code is generated.
#![allow(unknown_lints, unnecessary_transmutes, clippy::missing_safety_doc)]
#![allow(clippy::all)]

include!("bindings.rs");
include!("status.rs");

/// The routines, where wdk-sys puts them.
pub mod ntddk {
    pub use super::*;
}

/// `NT_SUCCESS` (a macro in ntdef.h): success and informational codes are non-negative.
pub const fn NT_SUCCESS(status: NTSTATUS) -> bool {
    status >= 0
}

// What mingw-w64 10's headers lack, from the Windows 10 2004 (20H1) WDK's wdm.h.

/// `POOL_FLAGS` (wdm.h, Windows 10 2004).
pub type POOL_FLAGS = u64;
/// `POOL_FLAG_NON_PAGED` (wdm.h, Windows 10 2004).
pub const POOL_FLAG_NON_PAGED: POOL_FLAGS = 0x0000_0000_0000_0040;

extern "C" {
    /// `ExAllocatePool2` (wdm.h, exported by ntoskrnl since Windows 10 2004); zeroes the
    /// allocation. Linked through the import library `check-driver.sh` makes with dlltool.
    pub fn ExAllocatePool2(Flags: POOL_FLAGS, NumberOfBytes: SIZE_T, Tag: ULONG) -> PVOID;
}
