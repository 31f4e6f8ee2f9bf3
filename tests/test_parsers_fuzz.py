"""Fuzz targets for the image reference parser and the manifest, index and config checks (hypothesis).

What any input must get: a value, or the one error of the tree that names what is wrong (ReferenceFormatError,
BlobError), never another exception; a reference that parses prints back to itself (its full and its familiar
form), and one built from valid parts parses to those parts; no reference that parses holds a control or a
non-ASCII character (they reach file names and URLs). A fixed set of examples by default, fresh ones with
``pytest --fuzz N`` (fuzzing.py).

Found by the first run: tags, repository components and digests were matched with ``^...$`` and ``\\w``, so a
trailing newline ("busybox:latest\\n", a digest ending in "\\n") and non-ASCII letters ("lat\\u00e9st") passed;
a manifest whose ``mediaType`` was a list or an object raised TypeError (unhashable) instead of BlobError.
"""

from __future__ import annotations

import json
import string

import pytest
from fuzzing import fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

from sandbox_kernel.runtime.errors import BlobError, ReferenceFormatError
from sandbox_kernel.runtime.image import media
from sandbox_kernel.runtime.image.ref import _DOMAIN_RE, parse_reference

HEX = "0123456789abcdef"
DIGEST = st.text(HEX, min_size=64, max_size=64).map(lambda h: "sha256:" + h)
COMPONENT = st.from_regex(r"\A[a-z0-9]{1,8}(?:[._-][a-z0-9]{1,8}){0,2}\Z")
TAG = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}\Z")
DOMAIN = st.sampled_from(["localhost", "localhost:5000", "registry.example.org", "ghcr.io", "127.0.0.1:5000",
                          "docker.io", "index.docker.io", "Registry.Example:443", "[::1]:5000"])
# pieces that references are made of, and the characters that must never get through
PIECES = st.sampled_from(["/", ":", "@", ".", "_", "-", "__", "sha256:", "localhost", "docker.io", "library",
                          "\n", "\r", "\t", " ", "\x00", "é", "ı", "..", "//", "latest", HEX * 4])


def _reference_texts() -> st.SearchStrategy[str]:
    structured = st.builds(
        lambda domain, path, tag, digest: ((domain + "/") if domain else "") + "/".join(path)
        + (f":{tag}" if tag else "") + (f"@{digest}" if digest else ""),
        st.none() | DOMAIN, st.lists(COMPONENT, min_size=1, max_size=3), st.none() | TAG, st.none() | DIGEST)
    mutated = st.tuples(structured, st.integers(0, 80), PIECES).map(lambda t: t[0][:t[1]] + t[2] + t[0][t[1]:])
    anything = st.text(st.characters(codec="utf-8"), max_size=120)
    glued = st.lists(PIECES | COMPONENT, max_size=8).map("".join)
    return structured | mutated | anything | glued


@fuzz_settings(3000)
@given(_reference_texts())
def test_any_reference_text_parses_or_is_refused_in_one_line(text: str) -> None:
    try:
        ref = parse_reference(text)
    except ReferenceFormatError as exc:
        assert "\n" not in str(exc)
        return
    full = str(ref)
    assert full.isascii() and full.isprintable() and " " not in full, full
    assert parse_reference(full) == ref
    assert parse_reference(ref.familiar()) == ref


@fuzz_settings(1000)
@given(st.none() | DOMAIN, st.lists(COMPONENT, min_size=1, max_size=3), st.none() | TAG, st.none() | DIGEST)
def test_a_reference_of_valid_parts_parses_to_them(domain: str | None, path: list[str], tag: str | None,
                                                   digest: str | None) -> None:
    text = ((domain + "/") if domain else "") + "/".join(path) + (f":{tag}" if tag else "") \
        + (f"@{digest}" if digest else "")
    if len(text.split("@")[0].rsplit(":", 1)[0]) > 200:
        return
    if domain is None and len(path) > 1 and ("." in path[0] or path[0] == "localhost"):
        domain, path = path[0], path[1:]  # (docker's rule: such a first component is a registry)
        if not _DOMAIN_RE.match(domain):  # ("a_b.c" is a fine path component and no host name)
            with pytest.raises(ReferenceFormatError, match="bad registry"):
                parse_reference(text)
            return
    ref = parse_reference(text)
    registry = {"index.docker.io": "docker.io", None: "docker.io"}.get(domain, domain)
    repository = "/".join(path)
    if registry == "docker.io" and len(path) == 1:
        repository = "library/" + repository
    assert (ref.registry, ref.repository) == (registry, repository)
    assert ref.digest == digest
    assert ref.tag == (tag if tag or digest else "latest")


# -- manifests, indexes, configs ------------------------------------------------------------------------------------

JSON_LEAF = st.none() | st.booleans() | st.integers(-2, 2**63) | st.floats(allow_nan=False) | st.text(max_size=12) \
    | DIGEST | st.sampled_from(sorted(media.MANIFEST_TYPES | media.LAYER_TYPES))
JSON = st.recursive(JSON_LEAF, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.sampled_from(["mediaType", "digest", "size", "schemaVersion", "config",
                                                       "layers", "manifests", "rootfs", "diff_ids", "platform",
                                                       "annotations", "x"]), inner, max_size=6),
                    max_leaves=20)


def _descriptor(media_type: str) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries({"mediaType": st.just(media_type), "digest": DIGEST, "size": st.integers(0, 2**40)})


VALID_MANIFEST = st.fixed_dictionaries({
    "schemaVersion": st.just(2), "mediaType": st.sampled_from(sorted(media.MANIFEST_TYPES)),
    "config": _descriptor("application/vnd.oci.image.config.v1+json"),
    "layers": st.lists(_descriptor("application/vnd.oci.image.layer.v1.tar+gzip"), max_size=3)})


def _mutations(valid: st.SearchStrategy[dict]) -> st.SearchStrategy[dict]:
    """A valid document with one key's value replaced by any JSON value, or one key dropped."""
    def mutate(doc: dict, key_index: int, value: object, drop: bool) -> dict:
        doc = json.loads(json.dumps(doc))
        key = sorted(doc)[key_index % len(doc)]
        if drop:
            del doc[key]
        else:
            doc[key] = value
        return doc

    return st.builds(mutate, valid, st.integers(0, 10), JSON, st.booleans())


def _checked(data: bytes, check) -> None:
    try:
        check(media.parse_json(data, "document"))
    except BlobError as exc:
        assert "\n" not in str(exc)


@fuzz_settings(2000)
@given(JSON | VALID_MANIFEST | _mutations(VALID_MANIFEST))
def test_any_json_is_a_manifest_or_a_blob_error(doc: object) -> None:
    data = json.dumps(doc).encode()
    _checked(data, media.check_manifest)
    _checked(data, media.check_index)
    _checked(data, lambda d: media.check_config(d, 1))


@fuzz_settings(500)
@given(st.binary(max_size=200) | st.text(string.printable, max_size=200).map(str.encode))
def test_any_bytes_are_json_or_a_blob_error(data: bytes) -> None:
    _checked(data, media.check_manifest)
