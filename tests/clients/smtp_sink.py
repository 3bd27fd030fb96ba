"""A real SMTP server (aiosmtpd) on loopback for porch's mail tests.

Usage: python smtp_sink.py PORT [--tls CERT KEY | --smtps CERT KEY] [--auth USER PASSWORD]
--tls requires STARTTLS with that certificate; --smtps speaks TLS from the
first byte (port 465's way); --auth requires AUTH (over TLS) with those
credentials. Prints "listening" once ready, then one JSON
line per message received: {"mail_from", "rcpt_tos", "subject", "from",
"text", "html", "tls", "login"}.
"""
import asyncio
import email
import email.policy
import json
import ssl
import sys

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Sink:
    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        text = message.get_body(preferencelist=("plain",))
        html = message.get_body(preferencelist=("html",))
        login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
        print(
            json.dumps(
                {
                    "mail_from": envelope.mail_from,
                    "rcpt_tos": envelope.rcpt_tos,
                    "subject": str(message["subject"]),
                    "from": str(message["from"]),
                    "text": text.get_content() if text else None,
                    "html": html.get_content() if html else None,
                    # STARTTLS sets session.ssl; implicit TLS shows on the transport.
                    "tls": session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None,
                    "login": login,
                }
            ),
            flush=True,
        )
        return "250 OK"


class Credentials:
    def __init__(self, user, password):
        self.user, self.password = user.encode(), password.encode()

    def __call__(self, server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (self.user, self.password)
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


async def main():
    args = sys.argv[1:]
    port = int(args.pop(0))
    options = {}
    while args:
        flag = args.pop(0)
        if flag == "--tls":
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(args.pop(0), args.pop(0))
            options.update(tls_context=context, require_starttls=True)
        elif flag == "--smtps":
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(args.pop(0), args.pop(0))
            options.update(ssl_context=context)
        elif flag == "--auth":
            options.update(authenticator=Credentials(args.pop(0), args.pop(0)), auth_required=True)
        else:
            sys.exit(f"unknown option {flag}")
    controller = Controller(Sink(), hostname="127.0.0.1", port=port, **options)
    controller.start()
    print("listening", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        controller.stop()


asyncio.run(main())
