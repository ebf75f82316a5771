"""Random layer stacks against a straightforward model of whiteout semantics.

The model: a layer's result is the lower tree minus what the layer hides
(paths it writes, everything under a path it writes as a file, whiteout
targets and all below them, everything below an opaque directory), plus the
layer's own entries and their parent directories, whatever their order.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures.images import LayoutWriter, dir, file, opaque, whiteout
from fixtures.trees import load_image
from ocikit.oci.unpack import unpack_image

PATHS = ["/".join(p) for n in (1, 2, 3) for p in itertools.product("ab", repeat=n)]
Tree = dict[str, tuple[str, int]]  # path -> ("file", content) | ("dir", 0)


def _ancestors(p: str) -> list[str]:
    parts = p.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _under(q: str, p: str) -> bool:
    return q.startswith(p + "/")


def model_apply(lower: Tree, ops: list[tuple[str, str, int]]) -> Tree:
    own: Tree = {}
    wh: list[str] = []
    opq: list[str] = []
    for kind, p, c in ops:
        for a in _ancestors(p):
            own.setdefault(a, ("dir", 0))
        if kind == "file":
            own[p] = ("file", c)
        elif kind == "dir":
            own[p] = ("dir", 0)
        elif kind == "whiteout":
            wh.append(p)
        else:
            opq.append(p)
            own.setdefault(p, ("dir", 0))
    out = {q: v for q, v in lower.items()
           if q not in own
           and not any(q == w or _under(q, w) for w in wh)
           and not any(_under(q, o) for o in opq)
           and not any(_under(q, p) and v2[0] == "file" for p, v2 in own.items())}
    out.update(own)
    return out


@st.composite
def stacks(draw: st.DrawFn) -> list[list[tuple[str, str, int]]]:
    layers = []
    state: Tree = {}
    for _ in range(draw(st.integers(1, 4))):
        ops: list[tuple[str, str, int]] = []
        own: Tree = {}
        for _ in range(draw(st.integers(0, 6))):
            kind = draw(st.sampled_from(["file", "dir", "whiteout", "opaque"]))
            p = draw(st.sampled_from(PATHS))
            c = draw(st.integers(0, 3))
            # Keep to stacks a real build could make: nothing under a file,
            # and no path written twice in one layer.
            if any(state.get(a, ("", 0))[0] == "file" or own.get(a, ("", 0))[0] == "file"
                   for a in _ancestors(p)):
                continue
            if kind in ("file", "dir") and (p in own or any(_under(q, p) for q in own)):
                continue
            if kind == "opaque" and "file" in (state.get(p, ("", 0))[0], own.get(p, ("", 0))[0]):
                continue
            ops.append((kind, p, c))
            for a in _ancestors(p):
                own.setdefault(a, ("dir", 0))
            if kind in ("file", "dir"):
                own[p] = (kind, c if kind == "file" else 0)
            elif kind == "opaque":
                own.setdefault(p, ("dir", 0))
        layers.append(ops)
        state = model_apply(state, ops)
    return layers


def _entries(ops):
    out = []
    for kind, p, c in ops:
        if kind == "file":
            out.append(file(p, f"content {c}"))
        elif kind == "dir":
            out.append(dir(p))
        elif kind == "whiteout":
            out.append(whiteout(p))
        else:
            out.append(opaque(p))
    return out


def _read_tree(root: Path) -> Tree:
    out: Tree = {}
    for p in root.rglob("*"):
        rel = p.relative_to(root).as_posix()
        if p.is_dir():
            out[rel] = ("dir", 0)
        else:
            out[rel] = ("file", int(p.read_text().split()[1]))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stacks())
def test_random_stacks_match_the_model(layers):
    expected: Tree = {}
    for ops in layers:
        expected = model_apply(expected, ops)
    tmp = Path(tempfile.mkdtemp(prefix="ocikit-prop-"))
    try:
        LayoutWriter(tmp / "layout").image([_entries(ops) for ops in layers],
                                           compression="none", tag="t")
        lay, man, cfg = load_image(tmp / "layout", "t")
        unpack_image(lay, man, cfg, tmp / "root")
        assert _read_tree(tmp / "root") == expected
    finally:
        shutil.rmtree(tmp)
