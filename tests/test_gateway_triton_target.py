"""GATEWAY_TRITON_URL's forms (one server, a list, dns:) and the merge of several indexes."""

from __future__ import annotations

import pytest

from gateway.backend import ModelVersionState
from gateway.config import ConfigError, Settings
from gateway.triton import merge_indexes
from gateway.triton_target import ResolveError, Server, TargetError, parse_target


def test_one_server_is_passed_through_unbalanced() -> None:
    """host:port stays the channel target as written, and is not balanced."""
    target = parse_target("triton:8001")
    assert not target.balanced
    assert target.servers == (Server("triton", 8001),)
    assert target.channel_target() == "triton:8001"


def test_a_list_of_addresses_becomes_one_ipv4_target() -> None:
    """Two IPv4 literals: one gRPC ipv4: target naming both, balanced."""
    target = parse_target("127.0.0.1:8001, 10.0.0.7:9001")
    assert target.balanced
    assert target.channel_target() == "ipv4:127.0.0.1:8001,10.0.0.7:9001"
    assert target.addresses() == (Server("127.0.0.1", 8001), Server("10.0.0.7", 9001))


def test_ipv6_literals_keep_their_brackets() -> None:
    """[::1]:8001,[::1]:8002 becomes an ipv6: target with bracketed addresses."""
    target = parse_target("[::1]:8001,[::1]:8002")
    assert target.channel_target() == "ipv6:[::1]:8001,[::1]:8002"


def test_host_names_in_a_list_are_resolved_preferring_ipv4() -> None:
    """localhost resolves (possibly to ::1 and 127.0.0.1): the target keeps the IPv4 ones."""
    target = parse_target("localhost:8001,127.0.0.1:8002")
    assert target.channel_target() == "ipv4:127.0.0.1:8001,127.0.0.1:8002"


def test_a_name_that_does_not_resolve_raises_resolve_error() -> None:
    """An unknown host in a list is a ResolveError when a channel is made, not at parse time."""
    target = parse_target("no-such-host.invalid:8001,127.0.0.1:8002")
    with pytest.raises(ResolveError):
        target.channel_target()


def test_dns_targets_are_passed_to_grpc_as_written() -> None:
    """dns:///name:port is balanced and left to gRPC's own resolver."""
    for text in ("dns:///triton.visionai.svc.cluster.local:8001", "dns://10.0.0.10/t:8001"):
        target = parse_target(text)
        assert target.balanced
        assert target.channel_target() == text
        assert target.dns_name is not None and target.dns_name.port == 8001


@pytest.mark.parametrize(
    "text",
    [
        "http://triton:8001",
        "triton",
        "triton:99999",
        "triton:0",
        "a:1,,b:2",
        "a:1,a:1",
        "dns:///triton",
        "dns:///triton:80x",
        "ipv4:127.0.0.1:8001",
    ],
)
def test_malformed_targets_are_refused(text: str) -> None:
    """Each malformed value raises TargetError."""
    with pytest.raises(TargetError):
        parse_target(text)


def test_settings_name_the_variable_for_a_bad_target() -> None:
    """Settings.from_env refuses a bad list with GATEWAY_TRITON_URL in the message."""
    with pytest.raises(ConfigError, match=r"GATEWAY_TRITON_URL.*listed twice"):
        Settings.from_env({"GATEWAY_AUTH": "off", "GATEWAY_TRITON_URL": "t:1,t:1"})
    settings = Settings.from_env({"GATEWAY_AUTH": "off", "GATEWAY_TRITON_URL": "a:1,b:2"})
    assert settings.triton_url == "a:1,b:2"


def row(version: str, state: str = "READY", reason: str = "") -> ModelVersionState:
    """One index row of model `m`."""
    return ModelVersionState(name="m", version=version, state=state, reason=reason)


def test_merged_index_is_ready_only_where_every_server_is() -> None:
    """A version ready on one server and missing on the other is not READY in the merge."""
    merged = {r.version: r for r in merge_indexes([[row("1"), row("2")], [row("1")]])}
    assert merged["1"].state == "READY"
    assert merged["2"].state == "UNAVAILABLE" and "unloaded" in merged["2"].reason


def test_merged_index_keeps_a_failure_over_any_other_state() -> None:
    """A load failure on one server wins over READY and LOADING elsewhere."""
    failed = row("3", "UNAVAILABLE", "failed to load: bad model")
    merged = merge_indexes([[row("3")], [failed], [row("3", "LOADING")]])
    assert merged == [failed]


def test_merged_index_of_one_server_is_that_index() -> None:
    """One index merges to itself."""
    index = [row("1"), row("2", "UNAVAILABLE", "unloaded")]
    assert merge_indexes([index]) == index
