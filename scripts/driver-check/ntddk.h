/* What scripts/check-driver.sh hands bindgen: the headers wdk-sys binds for a WDM driver. */
#include <ntddk.h>
