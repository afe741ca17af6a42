"""A flood of MQTT device connections against a running box, for the connection-budget figures.

Opens N raw MQTT 3.1.1 connections (CONNECT, wait for the CONNACK) to the box's listener and
keeps the accepted ones open, then times one GET /health. Prints how many devices were accepted,
how many were turned away with a refusing CONNACK, how many failed otherwise, and /health's
answer time. Run the box under a low descriptor limit to see the budget at work:

    prlimit --nofile=1024:1024 outpost run --data-dir /tmp/fd/data --listen 127.0.0.1:18080 &
    python3 tests/peers/fd_flood.py 1883 18080 600
"""
import socket, sys, time, urllib.request, struct
mqtt_port, http_port, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def connect_pkt(cid):
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + struct.pack(">H", len(cid)) + cid.encode()
    return bytes([0x10, len(body)]) + body
socks, accepted, refused, failed = [], 0, 0, 0
for i in range(n):
    try:
        s = socket.create_connection(("127.0.0.1", mqtt_port), timeout=5)
        s.sendall(connect_pkt(f"dev-{i}"))
        ack = s.recv(4)
        if len(ack) == 4 and ack[3] == 0: accepted += 1; socks.append(s)
        else: refused += 1; s.close()
    except Exception as e:
        failed += 1
t0 = time.time()
try:
    urllib.request.urlopen(f"http://127.0.0.1:{http_port}/health", timeout=5).read(); health = "ok"
except Exception as e:
    health = f"failed: {e}"
print(f"devices tried={n} accepted={accepted} refused_with_connack={refused} failed={failed} /health {health} in {1000*(time.time()-t0):.1f} ms")
