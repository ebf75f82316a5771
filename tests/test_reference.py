from __future__ import annotations

from pathlib import Path

import pytest

from ocikit.errors import InvalidReferenceError, UsageError
from ocikit.oci.digest import Digest
from ocikit.oci.location import (
    ArchiveLocation,
    LayoutLocation,
    RegistryLocation,
    parse_location,
)
from ocikit.oci.reference import Reference

HEX = "a" * 64


@pytest.mark.parametrize(("text", "full"), [
    ("nginx", "docker.io/library/nginx:latest"),
    ("nginx:1.25", "docker.io/library/nginx:1.25"),
    ("user/app:1", "docker.io/user/app:1"),
    ("docker.io/nginx", "docker.io/library/nginx:latest"),
    ("index.docker.io/library/nginx", "docker.io/library/nginx:latest"),
    ("localhost/app", "localhost/app:latest"),
    ("localhost:5000/a/b/c:tag", "localhost:5000/a/b/c:tag"),
    ("127.0.0.1:5000/app", "127.0.0.1:5000/app:latest"),
    ("ghcr.io/owner/repo:v1.2.3", "ghcr.io/owner/repo:v1.2.3"),
    (f"nginx@sha256:{HEX}", f"docker.io/library/nginx@sha256:{HEX}"),
    (f"nginx:1.25@sha256:{HEX}", f"docker.io/library/nginx:1.25@sha256:{HEX}"),
    ("[::1]:5000/app", "[::1]:5000/app:latest"),
    ("a__b/c-d.e:T_1", "docker.io/a__b/c-d.e:T_1"),
])
def test_parse_normalises(text: str, full: str) -> None:
    assert str(Reference.parse(text)) == full


@pytest.mark.parametrize("text", [
    "", " nginx", "Nginx", "nginx:", "nginx:-bad", "nginx@sha256:abc", "nginx@md5:" + HEX,
    "-a/b", "a//b", "a/b/", "host:port/app", "a" * 256, "nginx:" + "t" * 129,
    "a/B", "ex ample/app",
])
def test_malformed_references_raise_usage_errors(text: str) -> None:
    with pytest.raises(InvalidReferenceError) as info:
        Reference.parse(text)
    assert info.value.exit_code == 2


def test_parts_and_helpers() -> None:
    r = Reference.parse("nginx:1.25")
    assert (r.registry, r.repository, r.tag, r.digest) == ("docker.io", "library/nginx",
                                                           "1.25", None)
    assert r.api_host == "registry-1.docker.io"
    assert r.identifier == "1.25"
    assert r.familiar() == "nginx:1.25"
    pinned = r.with_digest(Digest("sha256", HEX))
    assert pinned.identifier == f"sha256:{HEX}"
    assert Reference.parse("ghcr.io/o/r").api_host == "ghcr.io"
    both = Reference.parse(f"nginx:1@sha256:{HEX}")
    assert both.tag == "1" and both.identifier == f"sha256:{HEX}"


def test_locations_transport_prefix_wins() -> None:
    assert parse_location("oci:5000/x") == LayoutLocation(Path("5000/x"))
    assert parse_location("oci:/tmp/l:v1") == LayoutLocation(Path("/tmp/l"), "v1")
    assert parse_location("oci:dir") == LayoutLocation(Path("dir"))
    assert parse_location("docker-archive:/tmp/a.tar") == ArchiveLocation(Path("/tmp/a.tar"))
    loc = parse_location("docker://busybox")
    assert isinstance(loc, RegistryLocation) and loc.explicit
    assert str(loc.ref) == "docker.io/library/busybox:latest"
    plain = parse_location("busybox")
    assert isinstance(plain, RegistryLocation) and not plain.explicit
    with pytest.raises(UsageError):
        parse_location("oci:")


def test_digest_validation() -> None:
    d = Digest.parse("sha256:" + HEX)
    assert str(d) == "sha256:" + HEX and d.short == HEX[:12]
    for bad in ("sha256:" + "A" * 64, "sha256:" + HEX[:-1], "sha256:../../etc", "nohex",
                "sha256:" + HEX + "/x"):
        with pytest.raises(InvalidReferenceError):
            Digest.parse(bad)
    assert Digest.from_bytes(b"") == Digest.parse(
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
