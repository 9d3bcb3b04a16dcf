"""SMTP probing: pure reply parsing/formatting (`reply`), pure classification (`classify`), and a
thin trio shell for one conversation (`client`). There is no DATA anywhere in this package."""

from ct_actors.smtp.classify import (
    RcptVerdict,
    SessionVerdict,
    classify_ehlo,
    classify_greeting,
    classify_mail,
    classify_rcpt,
    explain_rcpt,
    explain_session,
)
from ct_actors.smtp.client import SmtpClient, connect_session, open_session
from ct_actors.smtp.errors import (
    SmtpCommandRefused,
    SmtpConnectError,
    SmtpDisconnected,
    SmtpError,
    SmtpGreetingRejected,
    SmtpProtocolError,
    SmtpRejected,
    SmtpTimeout,
    SmtpTlsError,
)
from ct_actors.smtp.reply import ReplyParser, format_command, parse_reply
from ct_actors.smtp.reply_texts import is_about_us_text, is_blocklist_text
from ct_actors.smtp.session import SmtpSession, StartTlsMode
from ct_actors.smtp.types import EnhancedStatus, Reply, Stage, TranscriptEntry

__all__ = [
    "EnhancedStatus",
    "RcptVerdict",
    "Reply",
    "ReplyParser",
    "SessionVerdict",
    "SmtpClient",
    "SmtpCommandRefused",
    "SmtpConnectError",
    "SmtpDisconnected",
    "SmtpError",
    "SmtpGreetingRejected",
    "SmtpProtocolError",
    "SmtpRejected",
    "SmtpSession",
    "SmtpTimeout",
    "SmtpTlsError",
    "Stage",
    "StartTlsMode",
    "TranscriptEntry",
    "classify_ehlo",
    "classify_greeting",
    "classify_mail",
    "classify_rcpt",
    "connect_session",
    "explain_rcpt",
    "explain_session",
    "format_command",
    "is_about_us_text",
    "is_blocklist_text",
    "open_session",
    "parse_reply",
]
