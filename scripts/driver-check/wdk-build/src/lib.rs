//! Stand-in for `wdk-build`, used only by `scripts/check-driver.sh`.
//!
//! The real `configure_wdk_binary_build` finds the WDK and emits MSVC link settings
//! (`/DRIVER`, `/SUBSYSTEM:NATIVE`, `/ENTRY:DriverEntry`, ntoskrnl.lib, ...). This one emits
//! their GNU ld equivalents for mingw-w64, for the cdylib only:
//! - no C runtime or start files, and no default libraries: a driver imports from the kernel;
//! - `--subsystem native` and entry point `DriverEntry`;
//! - mingw-w64's `libntoskrnl.a`, then the import library for exports it lacks
//!   (`LPCMON_EXTRA_IMPORTS_DIR`, made by the script with dlltool);
//! - driver image conventions: base 0x140000000, 4 KiB sections, 512-byte file alignment.

use std::fmt;

/// The real crate's error type; this stand-in fails only if the script did not say where the
/// extra import library is.
#[derive(Debug)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Emits the link settings of a native kernel-mode image.
pub fn configure_wdk_binary_build() -> Result<(), ConfigError> {
    println!("cargo:rerun-if-env-changed=LPCMON_EXTRA_IMPORTS_DIR");
    let extra = std::env::var("LPCMON_EXTRA_IMPORTS_DIR")
        .map_err(|_| ConfigError("LPCMON_EXTRA_IMPORTS_DIR is not set (run scripts/check-driver.sh)".into()))?;
    for arg in [
        "-nostdlib",
        "-nostartfiles",
        "-Wl,--subsystem,native",
        "-Wl,--entry,DriverEntry",
        "-Wl,--image-base,0x140000000",
        "-Wl,--section-alignment,0x1000",
        "-Wl,--file-alignment,0x200",
        "-Wl,--nxcompat",
        "-Wl,--dynamicbase",
        "-Wl,--high-entropy-va",
    ] {
        println!("cargo:rustc-cdylib-link-arg={arg}");
    }
    println!("cargo:rustc-link-search=native={extra}");
    println!("cargo:rustc-link-lib=dylib=ntoskrnl");
    println!("cargo:rustc-link-lib=dylib=lpcmon_extra_imports");
    Ok(())
}
