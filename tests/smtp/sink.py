#!/usr/bin/env python3
"""A loopback SMTP sink for the Carnet test suite (aiosmtpd).

Every accepted message becomes DIR/<seq>.json, written atomically (a temp file, then a rename):

    {"mail_from": "...", "rcpt_tos": ["..."], "data": "<raw message text>",
     "data_b64": "<raw message bytes, base64>", "received_at": <unix float>}

`data` is the message decoded as UTF-8 (undecodable bytes replaced); `data_b64` holds the exact
bytes. Once listening the sink prints exactly one line `READY <port>` on stdout; it exits cleanly
on SIGTERM or SIGINT.

    sink.py --dir DIR [--host 127.0.0.1] [--port 0] [--auth USER:PASS] [--reject RCPT]...

--auth offers AUTH PLAIN and LOGIN without TLS and requires it before MAIL; --reject answers
RCPT TO for that address (case-insensitive) with `550 5.1.1 mailbox unavailable`, a hard bounce.
"""

import argparse
import asyncio
import base64
import itertools
import json
import logging
import os
import signal
import sys
import tempfile
import time
import warnings

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


class Sink:
    """aiosmtpd handler: rejects the listed recipients, stores every accepted message."""

    def __init__(self, directory, reject):
        self.directory = directory
        self.reject = {address.lower() for address in reject}
        self.seq = itertools.count(1)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower() in self.reject:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content
        if raw is None:
            raw = envelope.content
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "data": raw.decode("utf-8", "replace"),
            "data_b64": base64.b64encode(raw).decode("ascii"),
            "received_at": time.time(),
        }
        self.store(record)
        return "250 Message accepted for delivery"

    def store(self, record):
        name = f"{next(self.seq):06d}.json"
        fd, tmp = tempfile.mkstemp(prefix=".incoming-", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(record, out, ensure_ascii=False)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, os.path.join(self.directory, name))
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise


def authenticator_for(user, password):
    expected = LoginPassword(user.encode("utf-8"), password.encode("utf-8"))

    def authenticate(server, session, envelope, mechanism, auth_data):
        if isinstance(auth_data, LoginPassword) and auth_data == expected:
            return AuthResult(success=True, auth_data=auth_data)
        # handled=False: aiosmtpd then answers 535 itself (True would leave the client waiting).
        return AuthResult(success=False, handled=False)

    return authenticate


def parse_args(argv):
    parser = argparse.ArgumentParser(description="Loopback SMTP sink for the Carnet tests")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--dir", required=True, help="where accepted messages are written")
    parser.add_argument("--auth", metavar="USER:PASS", help="require AUTH PLAIN/LOGIN before MAIL")
    parser.add_argument("--tls-cert", metavar="PEM", help="offer (and require) STARTTLS with this certificate")
    parser.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    parser.add_argument("--reject", metavar="RCPT", action="append", default=[],
                        help="answer RCPT TO for this address with 550 (repeatable)")
    args = parser.parse_args(argv)
    if args.auth is not None and ":" not in args.auth:
        parser.error("--auth takes USER:PASS")
    return args


async def serve(args):
    os.makedirs(args.dir, exist_ok=True)
    handler = Sink(args.dir, args.reject)
    options = {
        # A fixed name: aiosmtpd otherwise calls socket.getfqdn(), which may wait on DNS.
        "hostname": "carnet-sink.localhost",
        "enable_SMTPUTF8": True,
    }
    tls = args.tls_cert is not None
    if tls:
        import ssl
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        options.update(tls_context=context, require_starttls=True)
    if args.auth is not None:
        user, password = args.auth.split(":", 1)
        options.update(
            authenticator=authenticator_for(user, password),
            auth_required=True,
            auth_require_tls=tls,
        )

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    server = await loop.create_server(lambda: SMTP(handler, loop=loop, **options),
                                      host=args.host, port=args.port)
    port = server.sockets[0].getsockname()[1]
    sys.stdout.write(f"READY {port}\n")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        server.close()
        # Python 3.12+ waits here for open connections too (a pooled client may keep one).
        try:
            await asyncio.wait_for(server.wait_closed(), timeout=2)
        except asyncio.TimeoutError:
            pass


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # aiosmtpd warns on stderr about AUTH without TLS: expected here, on loopback only.
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
