"""The extractor's fast tar header parser (layers._FastTarInfo) against tarfile's own, header by header."""

from __future__ import annotations

import tarfile

from fuzzing import fuzz_settings
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from sandbox_kernel.runtime.image.layers import _FastTarInfo

FIELDS = ("name", "mode", "uid", "gid", "size", "mtime", "chksum", "type", "linkname", "uname", "gname",
          "devmajor", "devminor")


def parse(cls: type[tarfile.TarInfo], buf: bytes) -> tuple[str, object]:
    try:
        info = cls.frombuf(buf, "utf-8", "surrogateescape")
    except Exception as exc:  # the same kind of refusal is what must match
        return "error", type(exc).__name__
    return "ok", (*(getattr(info, f) for f in FIELDS), getattr(info, "_sparse_structs", None))


names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=120)


@st.composite
def headers(draw: st.DrawFn) -> bytes:
    info = tarfile.TarInfo(draw(names) or "x")
    info.type = draw(st.sampled_from([tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE,
                                      tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE, tarfile.GNUTYPE_SPARSE]))
    info.mode = draw(st.integers(0, 0o7777))
    info.uid = draw(st.integers(0, 2**21 - 1))
    info.gid = draw(st.integers(0, 2**21 - 1))
    info.size = draw(st.integers(0, 2**33 - 1))
    info.mtime = draw(st.integers(0, 2**33 - 1))
    info.linkname = draw(names)[:100]
    info.uname = draw(st.text("abcxyz", max_size=31))
    fmt = draw(st.sampled_from([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT]))
    try:
        buf = info.tobuf(format=fmt, encoding="utf-8", errors="surrogateescape")
    except ValueError:
        buf = tarfile.TarInfo("fallback").tobuf()
    header = bytearray(buf[-512:] if len(buf) >= 512 else buf)
    for _ in range(draw(st.integers(0, 3))):  # damage: a byte anywhere, the checksum included
        header[draw(st.integers(0, 511))] = draw(st.integers(0, 255))
    return bytes(header)


@fuzz_settings(1500, suppress_health_check=[HealthCheck.too_slow])
@given(headers())
def test_fast_parser_agrees_with_tarfile(buf: bytes) -> None:
    assert parse(_FastTarInfo, buf) == parse(tarfile.TarInfo, buf)


def test_edge_cases_agree() -> None:
    plain = tarfile.TarInfo("a/b/")
    plain.type = tarfile.AREGTYPE
    v7_dir = plain.tobuf(format=tarfile.USTAR_FORMAT)
    base256 = tarfile.TarInfo("big")
    base256.size = 2**40
    for buf in (b"", b"\0" * 512, b"x" * 100, v7_dir, base256.tobuf(format=tarfile.GNU_FORMAT)[-512:],
                tarfile.TarInfo("p" * 150 + "/" + "n" * 90).tobuf(format=tarfile.USTAR_FORMAT)):
        assert parse(_FastTarInfo, buf) == parse(tarfile.TarInfo, buf)
