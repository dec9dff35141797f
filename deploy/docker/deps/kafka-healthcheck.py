"""Health check of the Kafka image (deploy/docker/kafka.Dockerfile): the broker answers a Metadata request and lists
at least one broker, i.e. it has joined its cluster.

    python3 kafka-healthcheck.py [HOST:PORT]      # default localhost:9092

Exit 0 when it does within 5 s, 1 otherwise with the reason on stderr (Docker's contract). One Metadata request
(version 4) over a plain socket, with the standard library only: no JVM starts for a check.
"""

import socket
import struct
import sys

METADATA, VERSION, CORRELATION_ID = 3, 4, 7


def metadata_request() -> bytes:
    client_id = b"healthcheck"
    header = struct.pack(">hhih", METADATA, VERSION, CORRELATION_ID, len(client_id)) + client_id
    body = struct.pack(">ib", -1, 0)  # topics: null (all of them), allow_auto_topic_creation: false
    return struct.pack(">i", len(header) + len(body)) + header + body


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the broker closed the connection")
        data += chunk
    return data


def broker_count(address: str, timeout_s: float = 5.0) -> int:
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        sock.settimeout(timeout_s)
        sock.sendall(metadata_request())
        (size,) = struct.unpack(">i", read_exactly(sock, 4))
        correlation_id, _throttle_ms, brokers = struct.unpack(">iii", read_exactly(sock, min(size, 12)))
    if correlation_id != CORRELATION_ID:
        raise ValueError(f"answer to another request (correlation id {correlation_id})")
    return brokers


def main(argv: list[str]) -> int:
    address = argv[1] if len(argv) > 1 else "localhost:9092"
    try:
        brokers = broker_count(address)
    except (OSError, ValueError, struct.error) as exc:
        print(f"healthcheck: Kafka at {address}: {exc}", file=sys.stderr)
        return 1
    if brokers < 1:
        print(f"healthcheck: Kafka at {address} lists no broker yet", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
