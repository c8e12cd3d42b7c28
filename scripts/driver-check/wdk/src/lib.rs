//! Stand-in for `wdk`, used only by `scripts/check-driver.sh`: the `println!` the driver uses.
//!
//! Like wdk's, it formats with `core::fmt` and prints with `DbgPrint`; unlike wdk's, it formats
//! into a fixed stack buffer and cuts a longer line short, so it needs no allocator.
#![no_std]

use core::fmt::{self, Write};

/// Bytes of one line, including the terminating NUL.
const LINE: usize = 512;

struct Line {
    bytes: [u8; LINE],
    len: usize,
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Keep one byte for the NUL; drop what does not fit (and any NUL inside `s`, which
        // would end the C string early).
        for &b in s.as_bytes() {
            if self.len + 1 >= LINE {
                break;
            }
            if b != 0 {
                self.bytes[self.len] = b;
                self.len += 1;
            }
        }
        Ok(())
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    let mut line = Line { bytes: [0; LINE], len: 0 };
    let _ = line.write_fmt(args);
    line.bytes[line.len] = 0;
    // SAFETY: both arguments are NUL-terminated byte strings that outlive the call; "%s\n"
    // makes DbgPrint read exactly one string argument. DbgPrint runs at IRQL <= DIRQL.
    unsafe {
        wdk_sys::ntddk::DbgPrint(c"%s\n".as_ptr(), line.bytes.as_ptr());
    }
}

/// Prints a line to the kernel debugger, as `wdk::println!` does.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::_print(format_args!($($arg)*))
    };
}
