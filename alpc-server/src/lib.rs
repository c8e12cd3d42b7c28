//! lpcmon's port servers and clients: Unix SEQPACKET, Windows ALPC and legacy LPC.
