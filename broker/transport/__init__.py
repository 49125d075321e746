"""Transports: adapters that carry the protocol over TCP (and TLS) and HTTP to the core."""
