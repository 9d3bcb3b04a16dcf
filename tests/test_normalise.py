import pytest

from ct_actors.probe.normalise import UnusableDomain, normalise_domain


@pytest.mark.parametrize(
    ("raw", "domain", "changes"),
    [
        ("acme.com", "acme.com", ()),
        ("https://www.Acme.com/about?x=1", "acme.com", ("scheme:https", "path", "case", "www")),
        ("http://acme.io/", "acme.io", ("scheme:http", "trailing-slash")),
        ("acme.org.", "acme.org", ("trailing-dot",)),
        ("  acme.org ", "acme.org", ("whitespace",)),
        ("acme.com:8080", "acme.com", ("port:8080",)),
        ("WWW.ACME.CO.UK", "acme.co.uk", ("case", "www")),
        ("münchen.de", "xn--mnchen-3ya.de", ("idna",)),
        (
            "https://www.Bücher.example/shop",
            "xn--bcher-kva.example",
            ("scheme:https", "path", "case", "idna", "www"),
        ),
        ("www.com", "www.com", ()),
        ("acme.com#top", "acme.com", ("path",)),
    ],
)
def test_normalise(raw: str, domain: str, changes: tuple[str, ...]) -> None:
    result = normalise_domain(raw)
    assert result.domain == domain
    assert result.changes == changes


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "NULL"),
        ("", "empty"),
        ("   ", "empty"),
        ("bob@acme.com", "'@'"),
        ("https://user:pw@acme.com", "'@'"),
        ("192.168.1.1", "IP address"),
        ("[::1]", "IP literal"),
        ("localhost", "single label"),
        ("acme", "single label"),
        ("acme..com", "empty label"),
        ("acme_corp.com", "not a valid host name label"),
        ("-acme.com", "not a valid host name label"),
        ("acme.com:http", "malformed port"),
        ("http://", "no host name"),
        ("a" * 64 + ".com", "not a valid host name label"),
        ("host.123", "numeric"),
    ],
)
def test_unusable(raw: str | None, reason: str) -> None:
    with pytest.raises(UnusableDomain) as info:
        normalise_domain(raw)
    assert reason in info.value.reason


def test_deterministic() -> None:
    assert normalise_domain("HTTP://WWW.X-Y.IO:443/a") == normalise_domain(
        "HTTP://WWW.X-Y.IO:443/a"
    )
