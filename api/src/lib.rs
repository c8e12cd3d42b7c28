//! lpcmon's HTTP service: event store, REST, SSE, dashboard and metrics; and the lpcmon binary.
