//! Build script for `lpcmon-driver`: lets `wdk-build` emit the WDM link settings (`/DRIVER`,
//! `/KERNEL`, `/ENTRY:DriverEntry`, `/INTEGRITYCHECK`, ntoskrnl.lib, ...) from the eWDK or
//! installed WDK. It refuses to run on a non-Windows host.

fn main() -> Result<(), wdk_build::ConfigError> {
    wdk_build::configure_wdk_binary_build()
}
