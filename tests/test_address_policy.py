"""Which MX addresses the prober may connect to (issue 10, item 4; ct_actors.net.address_policy).

Pure: nothing here opens a connection. The blocks come from the IANA IPv4/IPv6 Special-Purpose
Address Registries (RFC 6890) plus multicast and the reserved 240/4."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ct_actors.config import ConfigError, load_config
from ct_actors.net.address_policy import AddressPolicy, parse_networks

PUBLIC = AddressPolicy()


@pytest.mark.parametrize(
    ("ip", "kind"),
    [
        ("127.0.0.1", "loopback (127.0.0.0/8"),
        ("127.255.0.9", "loopback"),
        ("10.1.2.3", "private (10.0.0.0/8, RFC 1918)"),
        ("172.16.0.1", "private (172.16.0.0/12"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private (192.168.0.0/16"),
        ("169.254.169.254", "link-local (169.254.0.0/16, RFC 3927)"),
        ("100.64.0.1", "shared address space (carrier-grade NAT) (100.64.0.0/10, RFC 6598)"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "unspecified"),
        ("224.0.0.251", "multicast (224.0.0.0/4, RFC 5771)"),
        ("239.255.255.250", "multicast"),
        ("255.255.255.255", "limited broadcast"),
        ("240.0.0.1", "reserved (240.0.0.0/4"),
        ("192.0.2.10", "documentation (TEST-NET-1)"),
        ("198.51.100.7", "documentation (TEST-NET-2)"),
        ("203.0.113.5", "documentation (TEST-NET-3)"),
        ("198.18.0.1", "benchmarking"),
        ("192.0.0.8", "IETF protocol assignments"),
        ("::", "unspecified (::/128"),
        ("::1", "loopback (::1/128"),
        ("fe80::1", "link-local (fe80::/10"),
        ("fd00::25", "unique local (fc00::/7, RFC 4193)"),
        ("ff02::1", "multicast (ff00::/8"),
        ("2001:db8::25", "documentation (2001:db8::/32, RFC 3849)"),
        ("fec0::1", "deprecated site-local"),
        ("100::1", "discard-only"),
        ("::7f00:1", "deprecated IPv4-compatible"),
    ],
)
def test_non_public_addresses_are_refused(ip: str, kind: str) -> None:
    reason = PUBLIC.refusal(ip)
    assert reason is not None and reason.startswith("MX address is not public: ")
    assert kind in reason


@pytest.mark.parametrize(
    ("ip", "inner"),
    [
        ("::ffff:127.0.0.1", "127.0.0.1 is loopback"),
        ("::ffff:10.0.0.1", "10.0.0.1 is private"),
        ("64:ff9b::a9fe:a9fe", "169.254.169.254 is link-local"),
        ("2002:c0a8:0101::1", "192.168.1.1 is private"),
    ],
)
def test_addresses_embedding_ipv4_are_judged_by_that_address(ip: str, inner: str) -> None:
    reason = PUBLIC.refusal(ip)
    shown = ipaddress.ip_address(ip)
    assert reason is not None and inner in reason and reason.endswith(f"reached as {shown}")


@pytest.mark.parametrize(
    "ip", ["8.8.8.8", "1.1.1.1", "2a00:1450:4001:80b::1b", "::ffff:8.8.4.4", "2606:4700::1111"]
)
def test_public_addresses_are_allowed(ip: str) -> None:
    assert PUBLIC.refusal(ip) is None


def test_the_allow_list_lets_listed_networks_through_and_nothing_else() -> None:
    policy = AddressPolicy(parse_networks(["127.0.0.0/8", "fd00:1::/64"]))
    assert policy.refusal("127.0.0.1") is None
    assert policy.refusal("127.8.9.10") is None
    assert policy.refusal("::ffff:127.0.0.1") is None  # the same socket destination
    assert policy.refusal("fd00:1::25") is None
    assert policy.refusal("fd00:2::25") is not None
    assert policy.refusal("10.0.0.1") is not None
    assert policy.refusal("8.8.8.8") is None
    assert policy.refusal("not-an-ip") == "MX address 'not-an-ip' is not an IP address"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("127.0.0.1/8", "has host bits set"),
        ("localhost", "is not a CIDR network"),
        ("0.0.0.0/0", "would allow every address"),
        ("::/0", "would allow every address"),
    ],
)
def test_bad_allow_lists_are_refused(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_networks([value])


def test_allow_networks_is_validated_at_load(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[smtp]\nallow_networks = ['127.0.0.0/8', '::1/128']\n")
    cfg = load_config(path, probing=False)
    assert cfg.smtp.allow_networks == ("127.0.0.0/8", "::1/128")
    assert AddressPolicy.allowing(cfg.smtp.allow_networks).refusal("127.0.0.2") is None
    assert load_config(None, probing=False).smtp.allow_networks == ()
    path.write_text("[smtp]\nallow_networks = ['127.0.0.1/8']\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, probing=False)
    assert "smtp.allow_networks" in str(info.value) and "host bits set" in str(info.value)


# A property over the whole address space: whatever the allow-list is empty, an address is
# allowed only if Python's registry tables call it global (and it is not multicast).
@settings(max_examples=400, derandomize=True, deadline=None)
@given(st.ip_addresses())
def test_property_nothing_non_global_gets_through(address: ipaddress.IPv4Address) -> None:
    if PUBLIC.refusal(address) is None:
        assert address.is_global and not address.is_multicast
