#!/usr/bin/env python3
"""An OPC-UA server for Outpost's integration tests, built on asyncua (python-opcua's asyncio
successor, an implementation independent of Outpost's Rust client).

It serves, in namespace 2 ("urn:outpost:test"), variables that change at a known pattern. At
tick k (k = --start, --start+1, ..., one tick every --period-ms):

    ns=2;s=Counter      Int32    k
    ns=2;s=Temperature  Double   20.0 + k * 0.5
    ns=2;s=DoorOpen     Boolean  k is odd
    ns=2;s=Label        String   "step-<k>"
    ns=2;i=5001         UInt16   k % 1000        (display name "Numeric")

After writing tick k it prints `TICK <k>`; every 200 ms it prints
`SESSIONS active=<a> created=<c> subscriptions=<s>`: the sessions activated and not closed,
the sessions created since this process started, and the live subscriptions. `LISTENING <port>` is printed once
the server accepts connections. SIGUSR1 drops every client connection (a network cut as the
client sees it) without stopping the server: prints `DROPPED <n>`; so does --drop-at.

Options:
    --port N            TCP port (127.0.0.1); endpoint opc.tcp://127.0.0.1:N/
    --security S        none (default): only the None endpoint; basic256sha256: only
                        Basic256Sha256 Sign and SignAndEncrypt endpoints.
    --cert-dir D        where the server's certificate and key live (created on first use and
                        reused after a restart); needed with --security basic256sha256.
    --user U:P          accept only this user name and password (no anonymous access).
    --start K           the first tick (default 1).
    --period-ms MS      time between ticks (default 200).
    --drop-at K         drop every client connection right after tick K (once).
"""

import argparse
import asyncio
import logging
import signal
import sys
import weakref
from pathlib import Path

from asyncua import Server, ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.server.internal_session import InternalSession, SessionState
from asyncua.server.user_managers import UserManager
from asyncua.crypto.permission_rules import User, UserRole
from cryptography.x509.oid import ExtendedKeyUsageOID

APP_URI = "urn:outpost:test:opcua-server"

# Every session object the server creates, to count the live ones.
SESSIONS = weakref.WeakSet()
_original_init = InternalSession.__init__


def _tracking_init(self, *args, **kwargs):
    _original_init(self, *args, **kwargs)
    SESSIONS.add(self)


InternalSession.__init__ = _tracking_init


class OneUser(UserManager):
    """Accepts exactly one user name and password."""

    def __init__(self, name, password):
        self.name = name
        self.password = password

    def get_user(self, iserver, username=None, password=None, certificate=None):
        if username == self.name and password == self.password:
            return User(role=UserRole.User, name=username)
        return None


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--security", default="none", choices=["none", "basic256sha256"])
    parser.add_argument("--cert-dir")
    parser.add_argument("--user")
    parser.add_argument("--start", type=int, default=1)
    parser.add_argument("--period-ms", type=int, default=200)
    parser.add_argument("--drop-at", type=int)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    user_manager = None
    if args.user:
        name, _, password = args.user.partition(":")
        user_manager = OneUser(name, password)
    server = Server(user_manager=user_manager)
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{args.port}/")
    server.set_server_name("Outpost test server")
    await server.set_application_uri(APP_URI)
    if args.security == "basic256sha256":
        cert_dir = Path(args.cert_dir)
        cert_dir.mkdir(parents=True, exist_ok=True)
        key_file, cert_file = cert_dir / "server-key.pem", cert_dir / "server-cert.der"
        await setup_self_signed_certificate(
            key_file,
            cert_file,
            APP_URI,
            "127.0.0.1",
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
            {"countryName": "DE", "organizationName": "Outpost tests", "commonName": "opcua-test"},
        )
        await server.load_certificate(str(cert_file))
        await server.load_private_key(str(key_file))
        server.set_security_policy(
            [
                ua.SecurityPolicyType.Basic256Sha256_Sign,
                ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
            ]
        )
    else:
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    if args.user:
        server.set_identity_tokens([ua.UserNameIdentityToken])
    else:
        server.set_identity_tokens([ua.AnonymousIdentityToken])

    idx = await server.register_namespace("urn:outpost:test")
    assert idx == 2, idx
    objects = server.nodes.objects
    plant = await objects.add_object(ua.NodeId("Plant", idx), ua.QualifiedName("Plant", idx))
    start = args.start
    counter = await plant.add_variable(
        ua.NodeId("Counter", idx), ua.QualifiedName("Counter", idx), ua.Variant(start, ua.VariantType.Int32)
    )
    temperature = await plant.add_variable(
        ua.NodeId("Temperature", idx),
        ua.QualifiedName("Temperature", idx),
        ua.Variant(20.0 + start * 0.5, ua.VariantType.Double),
    )
    door = await plant.add_variable(
        ua.NodeId("DoorOpen", idx), ua.QualifiedName("DoorOpen", idx), ua.Variant(start % 2 == 1, ua.VariantType.Boolean)
    )
    label = await plant.add_variable(
        ua.NodeId("Label", idx), ua.QualifiedName("Label", idx), ua.Variant(f"step-{start}", ua.VariantType.String)
    )
    numeric = await plant.add_variable(
        ua.NodeId(5001, idx), ua.QualifiedName("Numeric", idx), ua.Variant(start % 1000, ua.VariantType.UInt16)
    )

    created_before = InternalSession._counter

    def drop_connections():
        transports = list(server.iserver.asyncio_transports)
        for transport in transports:
            transport.abort()
        print(f"DROPPED {len(transports)}", flush=True)

    async with server:
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, drop_connections)
        print(f"LISTENING {args.port}", flush=True)

        async def report_sessions():
            while True:
                active = sum(1 for s in list(SESSIONS) if s.state == SessionState.Activated and s.external)
                created = InternalSession._counter - created_before
                subscriptions = len(server.iserver.subscription_service.subscriptions)
                print(f"SESSIONS active={active} created={created} subscriptions={subscriptions}", flush=True)
                await asyncio.sleep(0.2)

        reporter = asyncio.create_task(report_sessions())
        k = start
        print(f"TICK {k}", flush=True)
        while True:
            await asyncio.sleep(args.period_ms / 1000.0)
            k += 1
            await counter.write_value(ua.Variant(k, ua.VariantType.Int32))
            await temperature.write_value(ua.Variant(20.0 + k * 0.5, ua.VariantType.Double))
            await door.write_value(ua.Variant(k % 2 == 1, ua.VariantType.Boolean))
            await label.write_value(ua.Variant(f"step-{k}", ua.VariantType.String))
            await numeric.write_value(ua.Variant(k % 1000, ua.VariantType.UInt16))
            print(f"TICK {k}", flush=True)
            if k == args.drop_at:
                drop_connections()
        reporter.cancel()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
