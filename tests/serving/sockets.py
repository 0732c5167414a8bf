"""The TCP sockets a set of processes listens on, read from ``/proc`` (Linux): which addresses a server exposes."""

from __future__ import annotations

import ipaddress
import os
import socket
import struct


def _address(hex_address: str) -> tuple[str, int]:
    """``0100007F:1F90`` (``/proc/net/tcp``: the address in host byte order per 32-bit word) -> ``("127.0.0.1",
    8080)``; IPv6 alike."""
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    words = b"".join(struct.pack("<I", struct.unpack(">I", raw[i : i + 4])[0]) for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, words), int(port, 16)


def listening(pids: set[int]) -> list[tuple[int, str, int]]:
    """``(pid, address, port)`` of every TCP socket in LISTEN state that one of ``pids`` holds."""
    owners: dict[str, int] = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:  # gone, or not ours to read
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                owners[target[8:-1]] = pid
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in owners:  # 0A: LISTEN; field 9: the socket's inode
                    out.append((owners[fields[9]], *_address(fields[1])))
    return out


def is_loopback(address: str) -> bool:
    """127.0.0.0/8, ::1 and IPv4-mapped loopback (``::ffff:127.0.0.1``)."""
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


def exposed(pids: set[int]) -> list[str]:
    """What of :func:`listening` is reachable from beyond this machine, as ``"name[pid] address:port"``."""
    out = []
    for pid, address, port in listening(pids):
        if not is_loopback(address):
            try:
                with open(f"/proc/{pid}/comm") as f:
                    name = f.read().strip()
            except OSError:
                name = "?"
            out.append(f"{name}[{pid}] {address}:{port}")
    return out
