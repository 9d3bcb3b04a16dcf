"""Pure reply parsing and command formatting (no I/O)."""

from __future__ import annotations

import pytest

from ct_actors.smtp.errors import SmtpCommandRefused, SmtpProtocolError
from ct_actors.smtp.reply import (
    MAX_LINE_LENGTH,
    ReplyParser,
    format_command,
    mail_from_arg,
    parse_extensions,
    parse_reply,
    rcpt_to_arg,
)
from ct_actors.smtp.types import EnhancedStatus, Reply

GMAIL_UNKNOWN = (
    b"550-5.1.1 The email account that you tried to reach does not exist. Please try\r\n"
    b"550-5.1.1 double-checking the recipient's email address for typos or\r\n"
    b"550-5.1.1 unnecessary spaces. For more information, go to\r\n"
    b"550 5.1.1  https://support.google.com/mail/?p=NoSuchUser a1si123 - gsmtp\r\n"
)


# -- framing -----------------------------------------------------------------------------------


def test_single_line() -> None:
    [r] = ReplyParser().feed(b"250 2.1.0 Ok\r\n")
    assert r == Reply(250, ("Ok",), EnhancedStatus(2, 1, 0))
    assert r.text == "Ok"
    assert str(r) == "250 2.1.0 Ok"


def test_multi_line_ehlo() -> None:
    [r] = ReplyParser().feed(
        b"250-mx.test Hello\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 8BITMIME\r\n"
    )
    assert r.code == 250
    assert r.lines == ("mx.test Hello", "PIPELINING", "SIZE 1000", "8BITMIME")
    assert r.text == "mx.test Hello PIPELINING SIZE 1000 8BITMIME"
    assert r.enhanced is None
    assert parse_extensions(r) == {"PIPELINING": "", "SIZE": "1000", "8BITMIME": ""}


def test_gmail_multi_line_strips_repeated_enhanced_code() -> None:
    [r] = ReplyParser().feed(GMAIL_UNKNOWN)
    assert r.code == 550
    assert r.enhanced == EnhancedStatus(5, 1, 1)
    assert str(r.enhanced) == "5.1.1"
    assert r.lines[0].startswith("The email account")
    assert all("5.1.1" not in line for line in r.lines)
    assert r.lines[-1].startswith("https://support.google.com")


def test_split_across_feeds_byte_by_byte() -> None:
    parser = ReplyParser()
    data = GMAIL_UNKNOWN + b"250 2.0.0 Ok\r\n"
    out: list[Reply] = []
    for i in range(len(data)):
        out.extend(parser.feed(data[i : i + 1]))
    assert [r.code for r in out] == [550, 250]
    assert out[0] == parse_reply(GMAIL_UNKNOWN)
    assert not parser.has_partial


def test_split_inside_crlf_and_between_lines() -> None:
    parser = ReplyParser()
    assert parser.feed(b"250-first\r") == []
    assert parser.has_partial
    assert parser.feed(b"\n250 sec") == []
    [r] = parser.feed(b"ond\r\n")
    assert r.lines == ("first", "second")
    assert not parser.has_partial


def test_bare_lf_and_mixed_line_ends() -> None:
    [r] = ReplyParser().feed(b"250-a\n250-b\r\n250 c\n")
    assert r.lines == ("a", "b", "c")


def test_several_replies_in_one_feed() -> None:
    replies = ReplyParser().feed(b"250 one\r\n251 two\r\n550 three\r\n")
    assert [(r.code, r.text) for r in replies] == [(250, "one"), (251, "two"), (550, "three")]


def test_code_only_and_trailing_space() -> None:
    a, b = ReplyParser().feed(b"250\r\n221 \r\n")
    assert (a.code, a.lines, a.text) == (250, ("",), "")
    assert (b.code, b.text) == (221, "")
    assert str(a) == "250"


def test_mixed_codes_in_multiline_rejected() -> None:
    with pytest.raises(SmtpProtocolError, match="mixes codes 250 and 251") as info:
        ReplyParser().feed(b"250-a\r\n251 b\r\n")
    assert info.value.stage == "reply"


@pytest.mark.parametrize(
    "line",
    [b"hello\r\n", b"25\r\n", b"2500 x\r\n", b"250x\r\n", b"199 x\r\n", b"650 x\r\n", b"\r\n"],
)
def test_malformed_lines_rejected(line: bytes) -> None:
    with pytest.raises(SmtpProtocolError):
        ReplyParser().feed(line)


def test_oversize_complete_line_rejected() -> None:
    ok = b"250 " + b"x" * (MAX_LINE_LENGTH - 4) + b"\r\n"
    assert ReplyParser().feed(ok)[0].code == 250
    with pytest.raises(SmtpProtocolError, match="longer than"):
        ReplyParser().feed(b"250 " + b"x" * (MAX_LINE_LENGTH - 3) + b"\r\n")


def test_oversize_partial_line_rejected_without_waiting_for_lf() -> None:
    parser = ReplyParser()
    parser.feed(b"250 " + b"x" * 1000)
    with pytest.raises(SmtpProtocolError, match="longer than"):
        parser.feed(b"x" * MAX_LINE_LENGTH)


def test_too_many_lines_rejected() -> None:
    parser = ReplyParser(max_lines=3)
    with pytest.raises(SmtpProtocolError, match="longer than 3 lines"):
        parser.feed(b"250-a\r\n" * 4)


def test_non_utf8_decoded_with_replacement() -> None:
    [r] = ReplyParser().feed(b"550 5.1.1 Benutzer \xfcnbekannt\r\n")
    assert r.text == "Benutzer \ufffdnbekannt"


# -- enhanced status codes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "enhanced", "text"),
    [
        ("250 2.1.5 Ok", "2.1.5", "Ok"),
        (
            "550 5.7.606 Access denied, banned sending IP",
            "5.7.606",
            "Access denied, banned sending IP",
        ),
        ("550 #5.7.1 Your access has been rejected", "5.7.1", "Your access has been rejected"),
        ("421 4.7.0", "4.7.0", ""),
        # class must match the reply's first digit (RFC 2034 §4 / RFC 3463 §2)
        ("550 2.1.0 looks like a code", None, "2.1.0 looks like a code"),
        ("250 4.2.0 nope", None, "4.2.0 nope"),
        # only as a prefix, and only a well-formed one
        ("550 User 5.1.1 unknown", None, "User 5.1.1 unknown"),
        ("550 5.1.1x no", None, "5.1.1x no"),
        ("550 5.1.1000 too many digits", None, "5.1.1000 too many digits"),
        ("550 3.1.1 bad class", None, "3.1.1 bad class"),
        ("220 mx.example.com ESMTP", None, "mx.example.com ESMTP"),
    ],
)
def test_enhanced_code(raw: str, enhanced: str | None, text: str) -> None:
    r = parse_reply(raw)
    assert (str(r.enhanced) if r.enhanced else None) == enhanced
    assert r.text == text


def test_enhanced_code_taken_from_first_line_only() -> None:
    r = parse_reply(b"550-User unknown\r\n550 5.1.1 really\r\n")
    assert r.enhanced is None
    assert r.lines == ("User unknown", "5.1.1 really")


def test_only_the_same_code_is_stripped_from_continuation_lines() -> None:
    r = parse_reply(b"550-5.1.1 first\r\n550-5.7.1 other\r\n550 5.1.1 last\r\n")
    assert r.enhanced == EnhancedStatus(5, 1, 1)
    assert r.lines == ("first", "5.7.1 other", "last")


def test_enhanced_status_parse() -> None:
    assert EnhancedStatus.parse("4.2.0") == EnhancedStatus(4, 2, 0)
    assert EnhancedStatus.parse("x") is None


def test_reply_predicates() -> None:
    assert parse_reply("250 ok").is_positive
    assert parse_reply("354 go").is_intermediate
    r4 = parse_reply("450 later")
    assert r4.is_transient and r4.is_negative and not r4.is_permanent and r4.klass == 4
    r5 = parse_reply("550 no")
    assert r5.is_permanent and r5.is_negative and not r5.is_positive


def test_parse_reply_requires_exactly_one() -> None:
    with pytest.raises(SmtpProtocolError):
        parse_reply(b"250 a\r\n250 b\r\n")
    with pytest.raises(SmtpProtocolError):
        parse_reply(b"250-a\r\n")


# -- commands ----------------------------------------------------------------------------------


def test_format_commands() -> None:
    assert format_command("EHLO", "probe.example.net") == b"EHLO probe.example.net\r\n"
    assert format_command("mail", mail_from_arg("a@b.example")) == b"MAIL FROM:<a@b.example>\r\n"
    assert format_command("MAIL", mail_from_arg("")) == b"MAIL FROM:<>\r\n"
    assert format_command("RCPT", rcpt_to_arg("x.y@z.example")) == b"RCPT TO:<x.y@z.example>\r\n"
    assert format_command("RSET") == b"RSET\r\n"
    assert format_command("QUIT", "") == b"QUIT\r\n"


@pytest.mark.parametrize("verb", ["DATA", "data", "BDAT", "Bdat", "BURL"])
def test_data_is_never_formatted(verb: str) -> None:
    with pytest.raises(SmtpCommandRefused, match="never sent"):
        format_command(verb)
    with pytest.raises(SmtpCommandRefused):
        format_command(verb, "100 LAST")


@pytest.mark.parametrize("verb", ["VRFY", "EXPN", "AUTH", "TURN", "X"])
def test_verbs_off_the_allow_list_are_refused(verb: str) -> None:
    with pytest.raises(SmtpCommandRefused, match="not allowed") as info:
        format_command(verb, "x")
    assert info.value.stage == "command"
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("arg", "reason"),
    [
        ("TO:<a@b.example>\r\nDATA", "CR/LF"),
        ("TO:<a@b.example>\nDATA", "CR/LF"),
        ("TO:<a@b.example>\rDATA", "CR/LF"),
        ("TO:<a@b\x00.example>", "control character"),
        ("TO:<a@b\x7f.example>", "control character"),
        ("TO:<jos\u00e9@b.example>", "non-ASCII"),
        ("TO:<" + "a" * 600 + "@b.example>", "longer than 512"),
    ],
)
def test_unsafe_arguments_refused(arg: str, reason: str) -> None:
    with pytest.raises(SmtpCommandRefused, match=reason) as info:
        format_command("RCPT", arg)
    assert info.value.stage == "rcpt"


@pytest.mark.parametrize(
    "address", ["a@b.example>\r\nDATA", "a@b.example> SIZE=1", "<a@b.example", "a b@c.example"]
)
def test_paths_refuse_brackets_whitespace_and_crlf(address: str) -> None:
    with pytest.raises(SmtpCommandRefused):
        rcpt_to_arg(address)
    with pytest.raises(SmtpCommandRefused):
        mail_from_arg(address)


def test_empty_recipient_refused() -> None:
    with pytest.raises(SmtpCommandRefused, match="empty"):
        rcpt_to_arg("")
