import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ct_actors.outcome import FailureCode
from ct_actors.probe.input_stage import Unusable, accept, input_evidence
from ct_actors.probe.normalise import NormalisedDomain, UnusableDomain, normalise_domain


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


# ─── issue 10: invalid punycode, ports, idempotence, mixed scripts ──────────────────────────


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        # RFC 5890 §2.3.2.1: an xn-- label must be a valid A-label (decodes, and encodes back).
        ("xn--zz.com", "label 'xn--zz' is not a valid A-label"),
        ("www.xn--a.com", "not a valid A-label"),
        ("XN--ZZ.com", "not a valid A-label"),
        # RFC 5891 §4.2.3.1: "??--" labels other than xn-- are reserved.
        ("ab--cd.com", "label 'ab--cd' has hyphens in the third and fourth positions"),
        # Ports: ASCII digits only, 1..65535 (RFC 3986 §3.2.3, RFC 6335 §6).
        ("acme.com:99999999", "port 99999999 is out of range"),
        ("acme.com:0", "port 0 is out of range"),
        ("acme.com:\u0661\u0662", "malformed port"),
        ("acme.com:\u00b2\u00b3", "malformed port"),
        ("acme.com:", "malformed port"),
    ],
)
def test_hostile_forms_are_refused(raw: str, reason: str) -> None:
    with pytest.raises(UnusableDomain) as info:
        normalise_domain(raw)
    assert reason in info.value.reason


def test_valid_a_labels_pass_unchanged() -> None:
    assert normalise_domain("xn--mnchen-3ya.de").domain == "xn--mnchen-3ya.de"
    assert normalise_domain("acme.com:65535").changes == ("port:65535",)


def test_every_leading_www_is_stripped_so_normalising_twice_changes_nothing() -> None:
    once = normalise_domain("www.www.acme.com")
    assert (once.domain, once.changes) == ("acme.com", ("www",))
    assert normalise_domain("www.www.com").domain == "www.com"  # never down to one label


@pytest.mark.parametrize(
    ("raw", "labels"),
    [
        ("\u0430pple.com", ("xn--pple-43d",)),  # Cyrillic U+0430 + Latin pple
        ("p\u0430ypal.com", ("xn--pypal-4ve",)),
        ("bücher.example", ()),  # Latin only
        ("\u0430\u0440\u0440\u04cf\u0435.com", ()),  # all Cyrillic: one script (not mixed)
        ("東京たワー.jp", ()),  # Han + Hiragana + Katakana: UTS #39 allows this mix
    ],
)
def test_mixed_script_labels_are_recorded(raw: str, labels: tuple[str, ...]) -> None:
    assert normalise_domain(raw).mixed_script == labels


@settings(max_examples=600, derandomize=True, deadline=None)
@given(
    st.one_of(
        st.text(max_size=80),
        st.builds(
            lambda scheme, www, host, port, path: f"{scheme}{www}{host}{port}{path}",
            st.sampled_from(["", "http://", "HTTPS://", "ftp://"]),
            st.sampled_from(["", "www.", "WWW.", "www.www."]),
            st.from_regex(r"[a-zA-Z0-9\u00e0-\u00ff\u0430-\u044f\-]{1,12}(\.[a-zA-Z0-9\-]{1,8}){1,3}\.?",
                          fullmatch=True),
            st.sampled_from(["", ":80", ":8080", ":99999", ":x"]),
            st.sampled_from(["", "/", "/a?b#c", "#x"]),
        ),
    )
)
def test_property_normalisation_is_idempotent(raw: str) -> None:
    try:
        first = normalise_domain(raw)
    except UnusableDomain:
        return
    again = normalise_domain(first.domain)
    assert (again.domain, again.changes) == (first.domain, ())
    assert again.mixed_script == first.mixed_script


def test_the_input_stage_accepts_a_domain_or_answers_no_domain() -> None:
    accepted = accept("HTTPS://WWW.Acme.COM/contact")
    assert isinstance(accepted, NormalisedDomain) and accepted.domain == "acme.com"
    assert input_evidence("HTTPS://WWW.Acme.COM/contact", accepted)["raw_domain"] == (
        "HTTPS://WWW.Acme.COM/contact"
    )
    refused = accept("ann@acme.com")
    assert isinstance(refused, Unusable)
    failed = refused.failed()
    assert failed.code is FailureCode.NO_DOMAIN
    assert failed.evidence == {"raw_domain": "ann@acme.com"}
