"""Advertise a mailnet broker by mDNS with whatever TXT record the test wants (a spoofer), until
standard input closes. Run inside a test's network namespace: `python tests/lan_advertiser.py
NAME FINGERPRINT ADDRESS PORT`."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from broker.discovery import Advertisement, register, unregister


def main() -> None:
    name, fingerprint, address, port = sys.argv[1:5]
    zc, info = register(Advertisement(name, fingerprint, (address,), int(port)))
    print("advertising", flush=True)
    try:
        sys.stdin.read()  # the test closes stdin to stop
    finally:
        unregister(zc, info)


if __name__ == "__main__":
    main()
