"""libvirt_xdr: XDR values, packets and frames round trip; malformed bytes are refused with a
sentence that says what and where; libvirt_names holds the binding's values."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import libvirt
import pytest

from cloudd.vmctl import libvirt_names, libvirt_wire
from cloudd.vmctl import libvirt_xdr as xdr
from cloudd.vmctl.libvirt_rpc import Beat, Keepalive
from cloudd.vmctl.libvirt_xdr import DomainRef, Packer, TypedParam, Unpacker, XdrError

VMCTL = Path(libvirt_wire.__file__).parent
UUID = bytes(range(16))


def reader(p: Packer) -> Unpacker:
    return Unpacker(p.getvalue(), "test payload")


@pytest.mark.parametrize(("pack", "unpack", "value"), [
    ("i32", "i32", -(2**31)), ("i32", "i32", 2**31 - 1), ("u32", "u32", 2**32 - 1),
    ("i64", "i64", -(2**63)), ("u64", "u64", 2**64 - 1), ("f64", "f64", -1.5),
    ("string", "string", ""), ("string", "string", "héllo wörld"), ("string", "string", "abcd"),
])
def test_scalars_round_trip(pack: str, unpack: str, value: object) -> None:
    p = getattr(Packer(), pack)(value)
    u = reader(p)
    assert getattr(u, unpack)() == value
    u.done()


def test_strings_are_padded_to_four_bytes() -> None:
    assert Packer().string("abcde").getvalue() == b"\0\0\0\x05abcde\0\0\0"
    assert Packer().string("abcd").getvalue() == b"\0\0\0\x04abcd"


def test_optional_array_uuid_and_domain_round_trip() -> None:
    p = Packer()
    p.optional("there", p.string).optional(None, p.string)
    p.u32(3).i32(1).i32(-2).i32(3)
    p.fixed(UUID)
    p.domain(DomainRef("cloudd-x", UUID, 7))
    u = reader(p)
    assert u.optional(u.string) == "there"
    assert u.optional(u.string) is None
    assert u.array(10, u.i32) == [1, -2, 3]
    assert u.uuid() == UUID
    assert u.domain() == DomainRef("cloudd-x", UUID, 7)
    u.done()


def test_typed_params_of_every_type_round_trip() -> None:
    params: list[xdr.Param] = [("i", TypedParam.INT, -5), ("ui", TypedParam.UINT, 2**32 - 1),
              ("l", TypedParam.LLONG, -(2**40)), ("ul", TypedParam.ULLONG, 2**64 - 1),
              ("d", TypedParam.DOUBLE, 0.25), ("b", TypedParam.BOOLEAN, True),
              ("s", TypedParam.STRING, "tcp://[::1]")]
    u = reader(Packer().typed_params(params))
    assert u.typed_params(16) == params
    u.done()


def test_a_remote_error_decodes_in_the_bindings_order() -> None:
    p = Packer().i32(libvirt.VIR_ERR_NO_DOMAIN).i32(libvirt.VIR_FROM_QEMU)
    p.optional("Domain not found: no domain with matching name 'x'", p.string)
    p.i32(libvirt.VIR_ERR_ERROR)
    p.optional(DomainRef("x", UUID, -1), p.domain)
    p.optional("Domain not found: %s", p.string).optional(None, p.string)
    p.optional("s3", p.string)
    p.i32(-1).i32(4)
    p.optional(None, p.string)
    u = reader(p)
    e = u.remote_error()
    u.done()
    assert (e.code, e.domain, e.message, e.level, e.str1, e.str2, e.str3, e.int1, e.int2) == (
        42, 10, "Domain not found: no domain with matching name 'x'", 2,
        "Domain not found: %s", None, "s3", -1, 4)


def test_packets_frame_and_parse() -> None:
    header = xdr.Header(xdr.REMOTE_PROGRAM, 1, xdr.Proc.DOMAIN_GET_STATE, 1, 9, 0)
    packet = xdr.frame(header, Packer().i32(5).i32(1).getvalue())
    frames = xdr.Deframer()
    # in pieces, as a socket may deliver it
    assert frames.feed(packet[:3]) == [] and frames.feed(packet[3:30]) == []
    [whole] = frames.feed(packet[30:] + packet[:10])
    assert frames.pending == 10
    got, body = xdr.parse(whole)
    assert got == header
    assert (body.i32(), body.i32()) == (5, 1)
    body.done()
    assert body.what == "reply REMOTE_PROC_DOMAIN_GET_STATE (serial 9)"


@pytest.mark.parametrize(("data", "read", "message"), [
    (b"\0\0", lambda u: u.i32(),
     "test payload: truncated at byte 0: an int needs 4 bytes, 2 left"),
    (b"\0\0\0\x08abc", lambda u: u.string(),
     "test payload: truncated at byte 4: a string needs 8 bytes, 3 left"),
    (b"\0\0\0\x03abc", lambda u: u.string(),
     "test payload: truncated at byte 7: the padding of a string needs 1 bytes, 0 left"),
    (b"\0\0\0\x02", lambda u: u.optional(u.string),
     "test payload: a boolean at byte 0 is 2, not 0 or 1"),
    (b"\0\0\0\x05", lambda u: u.array(4, u.i32),
     "test payload: an array of 5 items at byte 0 is over its limit of 4"),
    (b"\0\0\0\x02\xff\xfe\0\0", lambda u: u.string(),
     "test payload: a string before byte 8 is not UTF-8: 'utf-8' codec can't decode byte 0xff "
     "in position 0: invalid start byte"),
    (b"\0\0\0\x01\0\0\0\x01x\0\0\0\0\0\0\x09", lambda u: u.typed_params(4),
     "test payload: typed parameter 'x' has unknown type 9"),
])
def test_malformed_payloads_are_refused_precisely(
        data: bytes, read: Callable[[Unpacker], object], message: str) -> None:
    with pytest.raises(XdrError) as caught:
        read(Unpacker(data, "test payload"))
    assert str(caught.value) == message


def test_a_string_over_libvirts_limit_is_refused_before_reading_it() -> None:
    with pytest.raises(XdrError, match=r"a string of 4194305 items at byte 0 is over its limit "
                                       r"of 4194304"):
        Unpacker(b"\x00\x40\x00\x01", "p").string()


def test_bytes_left_over_are_refused() -> None:
    u = Unpacker(b"\0\0\0\x01\0\0\0\x02", "reply X")
    u.i32()
    with pytest.raises(XdrError, match=r"^reply X: 4 bytes left over after byte 4$"):
        u.done()


@pytest.mark.parametrize(("length", "message"), [
    (xdr.MESSAGE_MAX + 5, "a packet length of 33554437 bytes is outside libvirt's bounds "
                          "(28 to 33554436)"),
    (27, "a packet length of 27 bytes is outside libvirt's bounds (28 to 33554436)"),
])
def test_a_length_word_out_of_bounds_is_refused_at_once(length: int, message: str) -> None:
    with pytest.raises(XdrError) as caught:
        xdr.Deframer().feed(length.to_bytes(4, "big"))
    assert str(caught.value) == message


def test_the_largest_packet_is_accepted() -> None:
    frames = xdr.Deframer()
    assert frames.feed((xdr.MESSAGE_MAX + 4).to_bytes(4, "big")) == []


def test_a_packet_shorter_than_a_header_is_refused() -> None:
    with pytest.raises(XdrError, match=r"^a packet of 20 bytes is shorter than a header"):
        xdr.parse(bytes(20))


def test_procedure_numbers_are_libvirts() -> None:
    # spot checks against remote_protocol.x
    assert (xdr.Proc.CONNECT_OPEN, xdr.Proc.AUTH_LIST, xdr.Proc.DOMAIN_GET_CONTROL_INFO,
            xdr.Proc.CONNECT_LIST_ALL_DOMAINS, xdr.Proc.DOMAIN_MIGRATE_PERFORM3_PARAMS,
            xdr.Proc.DOMAIN_EVENT_CALLBACK_LIFECYCLE) == (1, 66, 229, 273, 305, 318)


def test_the_constants_are_the_bindings() -> None:
    ours = {n: getattr(libvirt_names, n) for n in dir(libvirt_names) if n.startswith("VIR_")}
    assert ours == {n: getattr(libvirt, n) for n in ours}
    assert all(getattr(libvirt_wire, n) == v for n, v in ours.items())


def test_every_constant_cloudd_uses_is_there() -> None:
    used = {m for f in VMCTL.glob("*.py")
            for m in re.findall(r"\blibvirt\.(VIR_[A-Z0-9_]+)", f.read_text())}
    assert len(used) > 50
    assert sorted(n for n in used if not hasattr(libvirt_wire, n)) == []


def test_the_binding_is_not_imported() -> None:
    for module in ("libvirt_wire", "libvirt_rpc", "libvirt_xdr", "libvirt_names"):
        text = (VMCTL / f"{module}.py").read_text()
        assert not re.search(r"^\s*(import libvirt\b|from libvirt\b)", text, re.M), module


@pytest.mark.parametrize(("uri", "target"), [
    ("qemu:///system", ("/run/libvirt/libvirt-sock", "qemu:///system")),
    ("qemu+unix:///system?socket=/tmp/s", ("/tmp/s", "qemu:///system")),
    ("qemu:///system?mode=direct&socket=/x", ("/x", "qemu:///system?mode=direct")),
])
def test_local_uris_name_their_socket(uri: str, target: tuple[str, str]) -> None:
    assert libvirt_wire.local_target(uri) == target


@pytest.mark.parametrize(("uri", "message"), [
    ("qemu+ssh://h/system", "libvirt_wire: transport 'ssh' of 'qemu+ssh://h/system' is not "
                            "supported: only local connections, on libvirtd's unix socket"),
    ("qemu://h/system", "libvirt_wire: 'qemu://h/system' names host 'h': only local "
                        "connections (driver:///path), on libvirtd's unix socket, are supported"),
    ("system", "libvirt_wire: 'system' is not a libvirt URI (driver:///path)"),
])
def test_remote_uris_are_refused(uri: str, message: str) -> None:
    with pytest.raises(libvirt_wire.libvirtError) as caught:
        libvirt_wire.open(uri)
    assert caught.value.get_error_message() == message
    assert caught.value.get_error_code() == libvirt.VIR_ERR_INVALID_ARG


def test_keepalive_pings_each_silent_interval_and_gives_up_after_count() -> None:
    ka = Keepalive(interval=5, count=2, last=100.0)
    transcript = [(t, ka.tick(t)) for t in (104.9, 105.0, 105.1, 110.0, 114.0, 115.0)]
    assert transcript == [(104.9, Beat.WAIT), (105.0, Beat.PING), (105.1, Beat.WAIT),
                          (110.0, Beat.PING), (114.0, Beat.WAIT), (115.0, Beat.DEAD)]
    assert ka.silence(115.0) == ("nothing received for 15 s (2 keepalive PINGs unanswered, "
                                 "interval 5 s)")


def test_keepalive_starts_over_on_anything_received() -> None:
    ka = Keepalive(interval=5, count=1, last=0.0)
    assert ka.tick(5.0) is Beat.PING
    ka.received(6.0)
    assert [ka.tick(t) for t in (10.9, 11.0, 16.0)] == [Beat.WAIT, Beat.PING, Beat.DEAD]
