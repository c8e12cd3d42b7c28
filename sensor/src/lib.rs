//! lpcmon's user-mode producers: the Linux proc-connector sensor and the load generator.
