//! Stand-in for `wdk-panic`, used only by `scripts/check-driver.sh`: the `#[panic_handler]` a
//! `no_std` driver needs. The driver is built with `panic = "abort"`, so a panic ends here.
#![no_std]

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {
        // A breakpoint: with a kernel debugger attached it stops here; without one the kernel
        // bugchecks (KMODE_EXCEPTION_NOT_HANDLED), as it must when kernel code cannot go on.
        // SAFETY: `int3` only raises a breakpoint exception; it touches no memory.
        unsafe { core::arch::asm!("int3") };
    }
}
