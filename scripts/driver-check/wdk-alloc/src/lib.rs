//! Stand-in for `wdk-alloc`, used only by `scripts/check-driver.sh`: `WdkAllocator`, a
//! `GlobalAlloc` over nonpaged pool.
#![no_std]

use core::alloc::{GlobalAlloc, Layout};

/// Pool tag "rust".
const TAG: u32 = u32::from_le_bytes(*b"rust");

/// Allocates from nonpaged pool with `ExAllocatePool2`, which aligns to 16 bytes on x64.
pub struct WdkAllocator;

// SAFETY: ExAllocatePool2 returns memory aligned to 16 bytes (MEMORY_ALLOCATION_ALIGNMENT on
// x64) or null; larger alignments are refused with null. ExFreePool frees what it returned.
unsafe impl GlobalAlloc for WdkAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() > 16 {
            return core::ptr::null_mut();
        }
        // SAFETY: IRQL <= DISPATCH_LEVEL for nonpaged pool, as for any Rust allocation here.
        unsafe {
            wdk_sys::ExAllocatePool2(wdk_sys::POOL_FLAG_NON_PAGED, layout.size() as _, TAG).cast()
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above (GlobalAlloc's contract).
        unsafe { wdk_sys::ntddk::ExFreePool(ptr.cast()) }
    }
}
