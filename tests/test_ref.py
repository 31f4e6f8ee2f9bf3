import pytest

from sandbox_kernel.runtime import ReferenceFormatError, parse_reference
from sandbox_kernel.runtime.image.ref import digest_hex, validate_digest

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "expected", "familiar"),
    [
        ("busybox", "docker.io/library/busybox:latest", "busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36", "busybox:1.36"),
        ("library/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
        ("jupyter/base-notebook", "docker.io/jupyter/base-notebook:latest", "jupyter/base-notebook:latest"),
        ("index.docker.io/library/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
        ("ghcr.io/owner/repo:v1", "ghcr.io/owner/repo:v1", "ghcr.io/owner/repo:v1"),
        ("localhost/busybox", "localhost/busybox:latest", "localhost/busybox:latest"),
        ("localhost:5000/a/b/c", "localhost:5000/a/b/c:latest", "localhost:5000/a/b/c:latest"),
        ("127.0.0.1:5000/x:tag", "127.0.0.1:5000/x:tag", "127.0.0.1:5000/x:tag"),
        (f"busybox@{D}", f"docker.io/library/busybox@{D}", f"busybox@{D}"),
        (f"busybox:1@{D}", f"docker.io/library/busybox:1@{D}", f"busybox:1@{D}"),
        ("a__b-c/d.e", "docker.io/a__b-c/d.e:latest", "a__b-c/d.e:latest"),
        ("Registry/x", "Registry/x:latest", "Registry/x:latest"),  # uppercase first part is a host
    ],
)
def test_docker_normalization(text, expected, familiar):
    ref = parse_reference(text)
    assert str(ref) == expected
    assert ref.familiar() == familiar


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("Busybox", "lowercase"),
        ("busybox:", "bad tag"),
        ("busybox:-x", "bad tag"),
        ("bus..box", "bad repository"),
        ("busybox@sha256:abc", "invalid digest"),
        ("busybox@sha256:" + "AB" * 32, "invalid digest"),
        ("busybox@md5:" + "ab" * 16, "invalid digest"),
        ("busybox@sha256:" + "ab" * 32 + "/../x", "invalid digest"),
        ("a/" + "b" * 260, "255"),
        ("-bad/x", "bad"),
        ("x//y", "bad repository"),
    ],
)
def test_rejects_bad_references(text, message):
    with pytest.raises(ReferenceFormatError, match=message):
        parse_reference(text)


@pytest.mark.parametrize(
    "digest",
    [
        "sha256:" + "0" * 63,
        "sha256:" + "0" * 65,
        "sha256:../../etc/passwd",
        "sha512:" + "0" * 64,
        None,
        "sha256:" + "g" * 64,
    ],
)
def test_digest_validation_is_strict(digest):
    with pytest.raises(ReferenceFormatError):
        validate_digest(digest)


def test_digest_hex_is_safe_file_name():
    assert digest_hex(D) == "ab" * 32
