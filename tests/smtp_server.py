#!/usr/bin/env python3
"""A real SMTP server for tests/smtp.rs, built on aiosmtpd.

    python3 tests/smtp_server.py --port PORT --out DIR [--auth USER:PASSWORD]

Listens on 127.0.0.1:PORT. Every accepted message is written to DIR as
NNNN.eml (the DATA bytes exactly as received, dot-unstuffed) and NNNN.json
(a summary made with Python's `email` package: envelope, decoded headers,
every MIME leaf part decoded from quoted-printable/base64 and its charset,
parser defects). The .json file appears last, atomically.

Recipients are answered by their local part:
  reject550@...  -> 550 5.1.1 at RCPT (the text quotes the address, as real
                    servers do, so the test can check it is never reported)
  defer451@...   -> 451 4.3.0 at RCPT
  reject554@...  -> accepted at RCPT, 554 5.7.1 after DATA
  slow3s@...     -> accepted, the message stored, and the 250 after DATA
                    sent 3 seconds later (a relay busy scanning it)
  anything else  -> accepted

A sender (MAIL FROM) whose local part is unknown-sender is refused with
553 5.1.8 (the sender's domain unknown), as relays refuse a practice's
misconfigured From address.

With --no-smtputf8, SMTPUTF8 is not offered (a relay that takes ASCII
addresses only).

With --auth, AUTH PLAIN/LOGIN is offered over plaintext and checked against
USER:PASSWORD (wrong credentials get 535 5.7.8); clients that do not log in
are still served.

The server exits when its stdin reaches end of file (the test process went
away) or on SIGTERM/SIGINT, and after --max-seconds in any case.
"""

import argparse
import asyncio
import json
import os
import signal
import sys
import threading

try:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword
except ImportError:  # pragma: no cover - reported to the test
    sys.stderr.write(
        "smtp_server.py: the Python package aiosmtpd is missing "
        "(pip install aiosmtpd; tests/run.sh installs it)\n"
    )
    sys.exit(3)

import email
import email.policy


def summarize(envelope, raw):
    """A JSON-friendly summary of one received message."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    headers = [[name, str(value)] for name, value in msg.items()]
    raw_headers = [[name, value] for name, value in msg.raw_items()]
    parts = []
    defects = [type(d).__name__ for d in msg.defects]
    for part in msg.walk():
        defects.extend(type(d).__name__ for d in part.defects)
        if part.is_multipart():
            continue
        try:
            content = part.get_content()
        except Exception as exc:  # noqa: BLE001 - reported to the test
            content = None
            defects.append("get_content failed: %s" % type(exc).__name__)
        parts.append(
            {
                "content_type": part.get_content_type(),
                "charset": part.get_content_charset(),
                "transfer_encoding": part.get("Content-Transfer-Encoding"),
                "content": content if isinstance(content, str) else None,
            }
        )
    return {
        "mail_from": envelope.mail_from,
        "rcpt_tos": list(envelope.rcpt_tos),
        "mail_options": list(envelope.mail_options),
        "content_type": msg.get_content_type(),
        "is_multipart": msg.is_multipart(),
        "headers": headers,
        "raw_headers": raw_headers,
        "parts": parts,
        "defects": defects,
        "size": len(raw),
    }


def write_atomically(path, data):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class Sink:
    """aiosmtpd handler: answers recipients by local part, stores messages."""

    def __init__(self, out_dir):
        self.out_dir = out_dir
        self.count = 0
        self.lock = threading.Lock()

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if address.split("@", 1)[0].lower() == "unknown-sender":
            return "553 5.1.8 <%s>: Sender address rejected: Domain not found" % address
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0].lower()
        if local == "reject550":
            return "550 5.1.1 <%s>: Recipient address rejected: User unknown" % address
        if local == "defer451":
            return "451 4.3.0 <%s>: Temporary local problem, try again" % address
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        if any(r.split("@", 1)[0].lower() == "reject554" for r in envelope.rcpt_tos):
            return "554 5.7.1 Message from <%s> rejected as spam" % envelope.mail_from
        raw = envelope.original_content
        if raw is None:
            raw = envelope.content
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        with self.lock:
            self.count += 1
            n = self.count
        base = os.path.join(self.out_dir, "%04d" % n)
        write_atomically(base + ".eml", raw)
        summary = summarize(envelope, raw)
        write_atomically(
            base + ".json",
            json.dumps(summary, ensure_ascii=False).encode("utf-8", "surrogateescape"),
        )
        if any(r.split("@", 1)[0].lower() == "slow3s" for r in envelope.rcpt_tos):
            await asyncio.sleep(3)
        return "250 2.0.0 Ok: queued as TEST%04d for <%s>" % (n, envelope.rcpt_tos[0])


def make_authenticator(expected):
    user, _, password = expected.partition(":")

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == user.encode()
            and auth_data.password == password.encode()
        )
        return AuthResult(success=ok, handled=False)

    return authenticator


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--auth", default=None, help="USER:PASSWORD")
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument(
        "--no-smtputf8",
        action="store_true",
        help="do not offer SMTPUTF8 (addresses must be ASCII)",
    )
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    smtp_kwargs = {"enable_SMTPUTF8": not args.no_smtputf8}
    if args.auth is not None:
        smtp_kwargs.update(
            authenticator=make_authenticator(args.auth),
            auth_required=False,
            auth_require_tls=False,
        )
    controller = Controller(
        Sink(args.out),
        hostname="127.0.0.1",
        port=args.port,
        server_hostname="smtp-test.local",
        ready_timeout=10.0,
        **smtp_kwargs,
    )
    controller.start()
    print("listening on 127.0.0.1:%d" % args.port, flush=True)

    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def watch_stdin():
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    stop.wait(args.max_seconds)
    controller.stop()


if __name__ == "__main__":
    main()
