"""Hostile input: generated malformed requests against the real gunicorn gateway over HTTP.

Hypothesis draws each request from a family of attacks: random bytes, truncated and
corrupted JPEG/PNG/GIF/WebP, decompression bombs (huge declared dimensions, PNGs of
thousands of chunks), invalid and URL-safe base64, data URLs of non-image types, JSON
of wrong types, huge strings, deep nesting, non-UTF-8 bodies, wrong content types and
huge headers. Every answer must be JSON; never a 5xx. Requests that cannot be an image
must get a 4xx; truncated or corrupted images may still decode (JPEG decoders are
forgiving), so those may also get a 200. The workers' memory must stay bounded.

CI form: 1000 requests on the fast test model. Full form (`-m slow`): 5000.
RELIABILITY_FUZZ_REQUESTS overrides the count.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image

from local_triton import TritonServer
from tests.fixtures.gateway import GatewayProcess, StartGateway
from tests.reliability_runs_support import ci_and_full, suite_gateway
from tests.reliability_support import (
    FAST_MODEL,
    env_int,
    report,
    wait_for_workers,
    worker_rss,
)

pytestmark = pytest.mark.e2e

HTTP_TIMEOUT_S = 30.0
MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_RSS_GROWTH_BYTES = 128 * 1024 * 1024  # per worker, over the whole run


@dataclass(frozen=True)
class Attack:
    """One hostile request: its family, body, headers and whether an image might be inside."""

    family: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    query: str = ""
    may_decode: bool = False  # a damaged (or stress) image that may still decode correctly

    def __repr__(self) -> str:
        """Short: family, sizes and a prefix (Hypothesis prints failing examples)."""
        sizes = {name: len(value) for name, value in self.headers.items()}
        return (
            f"Attack({self.family}, {len(self.body)} bytes {self.body[:60]!r}..., "
            f"header sizes {sizes}, query {len(self.query)} chars)"
        )


# -- seeds ---------------------------------------------------------------------------------------


def _image_bytes(image_format: str, size: int = 48) -> bytes:
    gradient = Image.linear_gradient("L").resize((size, size)).convert("RGB")
    buffer = io.BytesIO()
    gradient.save(buffer, image_format)
    return buffer.getvalue()


SEEDS = {fmt: _image_bytes(fmt) for fmt in ("JPEG", "PNG", "GIF", "WEBP")}


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = struct.pack(">I", zlib.crc32(kind + payload))
    return struct.pack(">I", len(payload)) + kind + payload + crc


def png_declaring(width: int, height: int, idat: bytes = b"") -> bytes:
    """A PNG whose header declares ``width`` x ``height`` (data mostly absent)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", idat or zlib.compress(b"\0" * 1024))
        + _png_chunk(b"IEND", b"")
    )


def png_many_chunks(count: int) -> bytes:
    """A valid 1x1 PNG preceded by ``count`` ancillary text chunks (parser stress)."""
    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    text = b"".join(_png_chunk(b"tEXt", b"k\0" + b"v" * 32) for _ in range(count))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + text
        + _png_chunk(b"IDAT", zlib.compress(b"\0\0"))
        + _png_chunk(b"IEND", b"")
    )


def zero_png_bomb(side: int) -> bytes:
    """A real, fully valid grayscale PNG of side x side zeros (compresses about 1000:1)."""
    compressor = zlib.compressobj(9)
    row = b"\0" * (side + 1)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", data)
        + _png_chunk(b"IEND", b"")
    )


def gif_declaring(width: int, height: int) -> bytes:
    """A GIF whose logical screen and image claim ``width`` x ``height``."""
    screen = struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    return b"GIF89a" + screen + image + b"\x3b"


def jpeg_declaring(width: int, height: int) -> bytes:
    """The seed JPEG with its frame header rewritten to ``width`` x ``height``."""
    data = bytearray(SEEDS["JPEG"])
    marker = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, marker + 5, height, width)
    return bytes(data)


# (file, may decode): only the many-chunks PNG is a valid image within the limits.
BOMBS = [
    (png_declaring(100_000, 100_000), False),
    (png_declaring(2**31 - 1, 1), False),
    (png_declaring(65_535, 65_535, zlib.compress(b"\0" * 200_000)), False),
    (zero_png_bomb(8_000), False),  # 64 Mpixel, a valid image over GATEWAY_MAX_PIXELS
    (png_many_chunks(20_000), True),
    (gif_declaring(65_535, 65_535), False),
    (jpeg_declaring(65_500, 65_500), False),
]


# -- strategies ------------------------------------------------------------------------------------

JSON_HEADERS = {"Content-Type": "application/json"}


def as_json(document: Any) -> bytes:
    """Serialise ``document`` (without checks: NaN, huge numbers and all)."""
    return json.dumps(document).encode("utf-8")


@st.composite
def random_bytes(draw: st.DrawFn) -> Attack:
    """Random bytes as a raw body, with a random content type."""
    body = draw(st.binary(min_size=1, max_size=4096))
    content_type = draw(
        st.sampled_from(["image/jpeg", "application/octet-stream", "image/png", "text/plain"])
    )
    # Two leading bytes fixed so the body is never accidentally JSON or a data URL.
    return Attack("random_bytes", b"\x00\x01" + body, {"Content-Type": content_type})


@st.composite
def damaged_image(draw: st.DrawFn) -> Attack:
    """A real image truncated or with bytes overwritten, raw or as base64 JSON."""
    fmt = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[fmt])
    if draw(st.booleans()):
        data = data[: draw(st.integers(min_value=1, max_value=len(data) - 1))]
        family = "truncated_image"
    else:
        for _ in range(draw(st.integers(min_value=1, max_value=16))):
            position = draw(st.integers(min_value=0, max_value=len(data) - 1))
            data[position] = draw(st.integers(min_value=0, max_value=255))
        family = "corrupted_image"
    if draw(st.booleans()):
        return Attack(
            family, bytes(data), {"Content-Type": "image/" + fmt.lower()}, may_decode=True
        )
    payload = {"image": base64.b64encode(bytes(data)).decode("ascii")}
    return Attack(family, as_json(payload), JSON_HEADERS, may_decode=True)


@st.composite
def bomb(draw: st.DrawFn) -> Attack:
    """A decompression bomb or parser stress file, raw or as base64 JSON."""
    data, may_decode = draw(st.sampled_from(BOMBS))
    if draw(st.booleans()):
        return Attack(
            "bomb", data, {"Content-Type": "application/octet-stream"}, may_decode=may_decode
        )
    body = as_json({"image": base64.b64encode(data).decode("ascii")})
    return Attack("bomb", body, JSON_HEADERS, may_decode=may_decode)


@st.composite
def bad_base64(draw: st.DrawFn) -> Attack:
    """Invalid characters, URL-safe alphabet, bad padding, or a data URL of the wrong type."""
    seed = base64.b64encode(SEEDS["PNG"]).decode("ascii")
    kind = draw(st.sampled_from(["invalid", "urlsafe", "padding", "mime", "malformed_url"]))
    if kind == "invalid":
        junk = draw(st.text(alphabet="!@#$%^&*()~`<>?\\|{}[]", min_size=1, max_size=8))
        position = draw(st.integers(min_value=0, max_value=len(seed)))
        text = seed[:position] + junk + seed[position:]
    elif kind == "urlsafe":
        # Bytes whose standard encoding has '+' and '/', sent in the URL-safe alphabet.
        raw = bytes([0xFB, 0xFF, 0xBF]) * draw(st.integers(min_value=1, max_value=64))
        text = base64.urlsafe_b64encode(SEEDS["PNG"] + raw).decode("ascii")
    elif kind == "padding":
        text = seed.rstrip("=") + "=" * draw(st.integers(min_value=3, max_value=6))
    elif kind == "mime":
        mime = draw(
            st.sampled_from(
                ["text/html", "application/json", "application/x-msdownload", "video/mp4"]
            )
        )
        text = f"data:{mime};base64,{seed}"
    else:
        text = draw(st.sampled_from(["data:", "data:image/png", "data:image/png;base64"]))
    return Attack(f"base64_{kind}", as_json({"image": text}), JSON_HEADERS)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=10,
)


@st.composite
def wrong_json(draw: st.DrawFn) -> Attack:
    """Fields of the wrong type or range, or a body that is not an object."""
    seed = "data:image/png;base64," + base64.b64encode(SEEDS["PNG"]).decode("ascii")
    field_name = draw(st.sampled_from(["image", "top_k", "version", "model", "<body>"]))
    value = draw(JSON_VALUES)
    if field_name == "<body>":
        document: Any = value if not isinstance(value, dict) else [value]
    elif field_name == "image":
        document = {"image": value if not isinstance(value, str) else 12345}
    else:
        bad = {
            "top_k": st.sampled_from([0, 21, -1, 2**70, 1.5, "many", True, None, [], {}]),
            "version": st.sampled_from([0, -3, "v2", 1.5, "1" * 40, True, [], {"v": 1}]),
            "model": st.sampled_from(["../etc", "a/b", "", "x" * 300, 5, [], {"m": 1}, "é"]),
        }[field_name]
        document = {"image": seed, field_name: draw(bad)}
        if document[field_name] in ("", None):  # these mean "the default": not an error
            document[field_name] = "../../x"
    return Attack(f"wrong_json_{field_name.strip('<>')}", as_json(document), JSON_HEADERS)


@st.composite
def huge_or_deep(draw: st.DrawFn) -> Attack:
    """Huge strings, deep nesting, or bodies over the size limit."""
    kind = draw(st.sampled_from(["huge_string", "deep_json", "over_limit", "huge_model"]))
    if kind == "huge_string":
        text = draw(st.sampled_from(["A", "/", "!"])) * draw(
            st.integers(min_value=100_000, max_value=MAX_BODY_BYTES // 2)
        )
        body = as_json({"image": text})
    elif kind == "deep_json":
        depth = draw(st.integers(min_value=1_000, max_value=200_000))
        body = b'{"image": ' + b"[" * depth + b"]" * depth + b"}"
    elif kind == "over_limit":
        body = b'{"image": "' + b"A" * (MAX_BODY_BYTES + 10) + b'"}'
    else:
        body = as_json({"image": "AAAA", "model": "m" * 1_000_000})
    return Attack(kind, body, JSON_HEADERS)


@st.composite
def bad_encoding_or_type(draw: st.DrawFn) -> Attack:
    """Non-UTF-8 JSON, and content types that do not match the body."""
    kind = draw(st.sampled_from(["non_utf8", "form", "multipart", "text", "empty"]))
    if kind == "non_utf8":
        junk = draw(st.binary(min_size=1, max_size=64).filter(lambda b: not b.isascii()))
        return Attack("non_utf8", b'{"image": "' + junk + b'\xff\xfe"}', JSON_HEADERS)
    if kind == "form":
        return Attack(
            "form_urlencoded",
            b"image=" + draw(st.binary(max_size=64)),
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
    if kind == "multipart":
        boundary = draw(st.sampled_from(["", "xyz", "a" * 200]))
        header = "multipart/form-data" + (f"; boundary={boundary}" if boundary else "")
        body = draw(st.binary(max_size=512))
        return Attack("multipart_broken", b"--xyz\r\n" + body, {"Content-Type": header})
    if kind == "text":
        return Attack("text_plain", b"\x00not an image", {"Content-Type": "text/plain"})
    return Attack("empty_body", b"", {"Content-Type": draw(st.sampled_from(["image/png", ""]))})


@st.composite
def huge_headers(draw: st.DrawFn) -> Attack:
    """One header over gunicorn's field limit, too many headers, or a huge query string."""
    kind = draw(st.sampled_from(["one_huge", "many", "query", "key"]))
    body = as_json({"image": "AAAA"})
    if kind == "one_huge":
        size = draw(st.integers(min_value=9_000, max_value=60_000))
        return Attack("header_huge", body, {**JSON_HEADERS, "X-Padding": "p" * size})
    if kind == "many":
        count = draw(st.integers(min_value=120, max_value=400))
        return Attack(
            "header_many", body, {**JSON_HEADERS, **{f"X-H{i}": "v" for i in range(count)}}
        )
    if kind == "key":
        # A huge API key header: refused by gunicorn's limit or by the key check, never a 5xx.
        size = draw(st.integers(min_value=100, max_value=20_000))
        return Attack("header_api_key", body, {**JSON_HEADERS, "X-API-Key": "k" * size})
    return Attack("query_huge", body, JSON_HEADERS, query="?top_k=" + "9" * 10_000)


ATTACKS = st.one_of(
    random_bytes(),
    damaged_image(),
    bomb(),
    bad_base64(),
    wrong_json(),
    huge_or_deep(),
    bad_encoding_or_type(),
    huge_headers(),
)


# -- the test --------------------------------------------------------------------------------------


def send(gateway: GatewayProcess, session: requests.Session, attack: Attack) -> requests.Response:
    """Send one attack with the valid API key (unless the attack sets its own)."""
    headers = {**gateway.headers, **attack.headers}
    return session.post(
        f"{gateway.url}/analyze{attack.query}",
        data=attack.body,
        headers=headers,
        timeout=HTTP_TIMEOUT_S,
    )


def check_answer(attack: Attack, response: requests.Response) -> None:
    """JSON always; never 5xx; 4xx unless a damaged image might still decode."""
    assert response.status_code < 500, (attack.family, response.status_code, response.text[:300])
    body = response.json()
    if response.status_code == 200:
        assert attack.may_decode, (attack.family, body)
        assert body["model"]["name"] == FAST_MODEL
    else:
        assert 400 <= response.status_code < 500
        assert set(body) == {"error", "message"}, body


def run_hostile(gateway: GatewayProcess, count: int) -> None:
    """Send ``count`` generated attacks; check each answer and the workers' memory."""
    families: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    session = requests.Session()
    wait_for_workers(gateway.process.pid, int(gateway.env["GATEWAY_WORKERS"]))
    rss_start = worker_rss(gateway.process.pid)
    peaks = dict(rss_start)

    @settings(
        max_examples=count,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        derandomize=False,
    )
    @given(attack=ATTACKS)
    def attack_once(attack: Attack) -> None:
        families[attack.family] += 1
        try:
            response = send(gateway, session, attack)
        except requests.ConnectionError:
            # gunicorn closes the connection after refusing a request it could not parse;
            # a fresh connection must then get an answer.
            session.close()
            response = send(gateway, session, attack)
        statuses[response.status_code] += 1
        check_answer(attack, response)
        if sum(families.values()) % 100 == 0:
            for pid, rss in worker_rss(gateway.process.pid).items():
                peaks[pid] = max(peaks.get(pid, 0), rss)

    attack_once()
    rss_end = worker_rss(gateway.process.pid)
    report(
        f"hostile input: {sum(families.values())} generated requests",
        f"families {dict(sorted(families.items()))}",
        f"statuses {dict(sorted(statuses.items()))}",
        f"worker RSS start {[r // 2**20 for r in rss_start.values()]} MiB, "
        f"peak {[r // 2**20 for r in peaks.values()]} MiB, "
        f"end {[r // 2**20 for r in rss_end.values()]} MiB",
    )
    assert sum(families.values()) >= count
    assert not any(status >= 500 for status in statuses)
    assert set(rss_start) == set(rss_end), "a worker died or was replaced"
    for pid, start in rss_start.items():
        assert peaks[pid] - start < MAX_RSS_GROWTH_BYTES, (pid, start, peaks[pid])
    # Still serving real requests afterwards.
    ok = session.post(
        f"{gateway.url}/analyze",
        data=SEEDS["PNG"],
        headers={**gateway.headers, "Content-Type": "image/png"},
        timeout=HTTP_TIMEOUT_S,
    )
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("count", ci_and_full(1000, 5000))
def test_hostile_requests_get_json_4xx_never_5xx(
    count: int,
    fast_triton: TritonServer,
    fast_repository: Any,
    start_gateway: StartGateway,
) -> None:
    """1000 (full: 5000) hostile requests: JSON 4xx (or 200 for a decodable image), no 5xx."""
    # The fast model behind a 4 MiB body limit and a 16 Mpixel image limit.
    gateway = suite_gateway(
        start_gateway,
        fast_triton,
        fast_repository,
        FAST_MODEL,
        GATEWAY_MAX_BODY_BYTES=str(MAX_BODY_BYTES),
        GATEWAY_MAX_PIXELS="16000000",
        GATEWAY_LOG_LEVEL="WARNING",
    )
    run_hostile(gateway, env_int("RELIABILITY_FUZZ_REQUESTS", count))
