"""Email channel: one plain-text message over SMTP (smtplib), with short timeouts.

``security`` is ``starttls`` (upgrade on the submission port, 587), ``ssl``
(implicit TLS, 465) or ``none`` (a relay on localhost). A server that does not
offer STARTTLS when asked to is an error, never a silent downgrade.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from server.config import Config
from server.notify_channels import DeliveryError, Outgoing

SECURITY_MODES = ("starttls", "ssl", "none")


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    username: str
    password: str
    security: str
    from_address: str
    timeout: float

    @classmethod
    def from_config(cls, config: Config) -> SmtpSettings | None:
        """None when no SMTP host is configured (the email channel is off)."""
        values = config.values["smtp"]
        if not values["host"]:
            return None
        security = str(values["security"]).lower()
        if security not in SECURITY_MODES:
            raise ValueError(f"[smtp] security must be one of {', '.join(SECURITY_MODES)}, not {security!r}")
        return cls(host=values["host"], port=int(values["port"]), username=values["username"],
                   password=values["password"], security=security,
                   from_address=values["from_address"] or f"lockstep@{socket.getfqdn()}",
                   timeout=float(values["timeout_seconds"]))


def build_message(settings: SmtpSettings, to: list[str], outgoing: Outgoing) -> EmailMessage:
    message = EmailMessage()
    message["From"] = settings.from_address
    message["To"] = ", ".join(to)
    message["Subject"] = outgoing.subject()
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=settings.from_address.rpartition("@")[2] or None)
    message["X-Lockstep-Kind"] = outgoing.kind
    message["X-Lockstep-Notification"] = str(outgoing.id)
    message.set_content(outgoing.text())
    return message


def send_email(settings: SmtpSettings, to: list[str], outgoing: Outgoing) -> None:
    """One attempt. Every socket operation is bounded by ``settings.timeout``."""
    if not to:
        raise DeliveryError("no recipients", permanent=True)
    message = build_message(settings, to, outgoing)
    context = ssl.create_default_context()
    try:
        if settings.security == "ssl":
            client: smtplib.SMTP = smtplib.SMTP_SSL(settings.host, settings.port, timeout=settings.timeout,
                                                   context=context)
        else:
            client = smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout)
        with client:
            if settings.security == "starttls":
                client.starttls(context=context)
            if settings.username:
                client.login(settings.username, settings.password)
            client.send_message(message)
    except smtplib.SMTPNotSupportedError as exc:
        raise DeliveryError(f"SMTP server {settings.host}: {exc}", permanent=True) from None
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _ in exc.recipients.values()]
        raise DeliveryError(f"SMTP server refused recipient(s) {', '.join(exc.recipients)} ({codes})",
                            permanent=all(code >= 500 for code in codes)) from None
    except smtplib.SMTPAuthenticationError as exc:
        raise DeliveryError(f"SMTP login refused ({exc.smtp_code})", permanent=True) from None
    except smtplib.SMTPResponseException as exc:
        text = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
        raise DeliveryError(f"SMTP server {settings.host} answered {exc.smtp_code} {text}"[:500],
                            permanent=exc.smtp_code >= 500) from None
    except (OSError, smtplib.SMTPException) as exc:  # refused, timed out, reset, TLS failure
        raise DeliveryError(f"SMTP server {settings.host}:{settings.port}: {type(exc).__name__}: {exc}"[:500]) \
            from None
