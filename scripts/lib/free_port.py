#!/usr/bin/env python3
"""free_port.py - print a loopback TCP port nobody listens on.

The port is taken below the kernel's ephemeral range
(net.ipv4.ip_local_port_range), so that no outgoing connection of a process
already running can be holding it by the time the caller binds it; a port
the kernel picks for a bound socket (port 0) is the fallback.  The port is
free when printed; whoever uses it binds it a moment later.
"""
import random
import socket
import sys


def ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def bindable(port):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        return s.getsockname()[1]
    except OSError:
        return 0
    finally:
        s.close()


def main():
    low, high = 10000, ephemeral_low() - 1
    if high - low >= 1000:
        for _ in range(64):
            port = bindable(random.randint(low, high))
            if port:
                print(port)
                return 0
    port = bindable(0)
    if not port:
        print("free_port.py: cannot bind a loopback socket", file=sys.stderr)
        return 1
    print(port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
