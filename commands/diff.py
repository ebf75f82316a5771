"""Image insight commands: diff and efficiency."""

from __future__ import annotations

import json
from typing import Any

import click

from ocikit.commands.common import (
    get_store,
    human_size,
    make_client,
    parse_platform,
    platform_option,
    print_json,
    table,
)
from ocikit.commands.render import MODES, close_renderer, make_renderer
from ocikit.errors import OcikitError
from ocikit.oci.descriptor import Descriptor
from ocikit.oci.diff import (
    ADDED,
    CHANGED,
    ONLY_A,
    ONLY_B,
    RECOMPRESSED,
    REMOVED,
    SHARED,
    ConfigChange,
    FileChange,
    FileDiff,
    FileState,
    LayerSide,
)

_STATUS_TEXT = {SHARED: "shared", RECOMPRESSED: "recompressed", ONLY_A: "only in A",
                ONLY_B: "only in B"}
_MARK = {ADDED: "A", REMOVED: "D", CHANGED: "C"}


def _side_dict(s: LayerSide | None) -> dict[str, Any] | None:
    if s is None:
        return None
    return {"Index": s.index, "Digest": str(s.digest),
            "DiffId": str(s.diff_id) if s.diff_id else None,
            "MediaType": s.descriptor.media_type, "Size": s.size}


def _fetched(descs: tuple[Descriptor, ...]) -> list[dict[str, Any]]:
    return [{"Digest": str(d.digest), "Size": d.size} for d in descs]


def _files_dict(f: FileDiff) -> dict[str, Any]:
    return {"Added": len(f.of(ADDED)), "Removed": len(f.of(REMOVED)),
            "Changed": len(f.of(CHANGED)), "AddedBytes": f.added_bytes,
            "RemovedBytes": f.removed_bytes, "LayersRead": list(f.layers_read),
            "Changes": [c.to_dict() for c in f.changes]}


def _value(v: Any) -> str:
    if v is None:
        return "(none)"
    if isinstance(v, list):
        return json.dumps(v)
    if v is True:
        return "yes"
    return str(v)


def _config_line(c: ConfigChange) -> str:
    name = f"{c.field} {c.key}" if c.key else c.field
    if c.a is None:
        return f"  + {name}" + ("" if c.b is True else f" = {_value(c.b)}")
    if c.b is None:
        return f"  - {name}" + ("" if c.a is True else f" = {_value(c.a)}")
    return f"  ~ {name}: {_value(c.a)} -> {_value(c.b)}"


def _field(name: str, s: FileState) -> str:
    if name == "type":
        return s.type
    if name == "size":
        return human_size(s.size)
    if name == "mode":
        return f"{s.mode:04o}"
    if name == "owner":
        return f"{s.uid}:{s.gid}"
    if name == "link":
        return s.link or "-"
    if name == "device":
        return s.device or "-"
    return s.digest.split(":", 1)[-1][:12] if s.digest else "?"


def _describe(c: FileChange) -> str:
    if c.change == ADDED and c.b is not None:
        return f"{c.b.type} {human_size(c.b.size)}" if c.b.type == "file" else c.b.type + (
            f" -> {c.b.link}" if c.b.link else "")
    if c.change == REMOVED and c.a is not None:
        return f"{c.a.type} {human_size(c.a.size)}" if c.a.type == "file" else c.a.type
    assert c.a is not None and c.b is not None
    return ", ".join(f"{f} {_field(f, c.a)} -> {_field(f, c.b)}" for f in c.fields)


@click.command()
@click.option("--files", "files", is_flag=True,
              help="also compare the root filesystems file by file")
@click.option("--json", "as_json", is_flag=True, help="JSON output")
@platform_option()
@click.option("--progress", "progress_mode", type=click.Choice(MODES), default="auto",
              show_default=True, help="how to show layer downloads on stderr")
@click.argument("ref_a")
@click.argument("ref_b")
@click.pass_context
def diff(ctx: click.Context, files: bool, as_json: bool, platform: str | None,
         progress_mode: str, ref_a: str, ref_b: str) -> None:
    """Compare two images: shared and differing layers, config, and files with --files."""
    from ocikit.diff import diff_images

    renderer = make_renderer(progress_mode, as_json and progress_mode == "auto")
    try:
        d = diff_images(ref_a, ref_b, get_store(ctx), files=files,
                        platform=parse_platform(platform), client_factory=make_client,
                        progress=renderer)
    finally:
        close_renderer(renderer)
    lay = d.layers
    if as_json:
        doc: dict[str, Any] = {
            "A": {"Name": d.a.name, "Digest": str(d.a.digest),
                  "ManifestDigest": str(d.a.manifest.digest), "Source": d.a.source},
            "B": {"Name": d.b.name, "Digest": str(d.b.digest),
                  "ManifestDigest": str(d.b.manifest.digest), "Source": d.b.source},
            "Layers": [{"Status": p.status, "A": _side_dict(p.a), "B": _side_dict(p.b)}
                       for p in lay.pairs],
            "Summary": {"Shared": lay.count(SHARED), "SharedBytes": lay.size(SHARED),
                        "Recompressed": lay.count(RECOMPRESSED),
                        "OnlyA": lay.count(ONLY_A), "OnlyABytes": lay.size(ONLY_A, "a"),
                        "OnlyB": lay.count(ONLY_B), "OnlyBBytes": lay.size(ONLY_B, "b"),
                        "CommonBase": lay.common_base},
            "Config": [c.to_dict() for c in d.config],
            "Files": _files_dict(d.files) if d.files is not None else None,
            "Fetched": _fetched(d.fetched),
        }
        print_json(doc)
        return
    click.echo(f"A: {d.a.name} ({d.a.manifest.digest.short})")
    click.echo(f"B: {d.b.name} ({d.b.manifest.digest.short})")
    click.echo("")
    click.echo(table(
        [[str(p.a.index) if p.a else "-", str(p.b.index) if p.b else "-",
          _STATUS_TEXT[p.status],
          p.a.digest.short if p.a else "-", p.b.digest.short if p.b else "-",
          human_size(p.a.size) if p.a else "-", human_size(p.b.size) if p.b else "-"]
         for p in lay.pairs],
        ["#A", "#B", "STATUS", "DIGEST A", "DIGEST B", "SIZE A", "SIZE B"]))
    click.echo(f"{lay.count(SHARED)} shared ({human_size(lay.size(SHARED))}), "
               f"{lay.count(RECOMPRESSED)} recompressed, "
               f"{lay.count(ONLY_A)} only in A ({human_size(lay.size(ONLY_A, 'a'))}), "
               f"{lay.count(ONLY_B)} only in B ({human_size(lay.size(ONLY_B, 'b'))})")
    click.echo("")
    if d.config:
        click.echo("Config:")
        for c in d.config:
            click.echo(_config_line(c))
    else:
        click.echo("Config: no changes")
    if d.files is None:
        return
    f = d.files
    click.echo("")
    click.echo("Files:")
    for fc in f.changes:
        click.echo(f"  {_MARK[fc.change]} {fc.path}  {_describe(fc)}")
    click.echo(f"{len(f.of(ADDED))} added ({human_size(f.added_bytes)}), "
               f"{len(f.of(REMOVED))} removed ({human_size(f.removed_bytes)}), "
               f"{len(f.of(CHANGED))} changed; read {len(f.layers_read)} layers"
               + (f", fetched {len(d.fetched)} from the registry "
                  f"({human_size(sum(x.size for x in d.fetched))})" if d.fetched else ""))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="JSON output")
@click.option("--min-efficiency", type=click.FloatRange(0.0, 1.0), default=None,
              metavar="SCORE", help="exit 1 when the score is under SCORE (0..1)")
@click.option("--top", type=click.IntRange(0), default=10, show_default=True,
              help="how many of the largest wasted files to list")
@platform_option()
@click.option("--progress", "progress_mode", type=click.Choice(MODES), default="auto",
              show_default=True, help="how to show layer downloads on stderr")
@click.argument("ref")
@click.pass_context
def efficiency(ctx: click.Context, as_json: bool, min_efficiency: float | None, top: int,
               platform: str | None, progress_mode: str, ref: str) -> None:
    """Bytes that later layers overwrite or delete, and dive's efficiency score."""
    from ocikit.efficiency import image_efficiency

    renderer = make_renderer(progress_mode, as_json and progress_mode == "auto")
    try:
        rep = image_efficiency(ref, get_store(ctx), platform=parse_platform(platform),
                               client_factory=make_client, progress=renderer)
    finally:
        close_renderer(renderer)
    e = rep.result
    if as_json:
        print_json({
            "Name": rep.image.name, "Digest": str(rep.image.digest),
            "Efficiency": e.score, "TotalBytes": e.total_bytes, "UserBytes": e.user_bytes,
            "WastedBytes": e.wasted_bytes, "DiveWastedBytes": e.dive_wasted_bytes,
            "UserWastedRatio": e.user_wasted_ratio, "LayerBytes": list(e.layer_bytes),
            "Wasted": [{"Path": w.path, "Size": w.size, "Layer": w.layer, "ByLayer": w.by_layer,
                        "How": w.how} for w in e.wasted[:top]],
            "Inefficiencies": [{"Path": x.path, "Count": x.count,
                                "CumulativeSize": x.cumulative_size}
                               for x in e.inefficiencies[:top]],
            "Fetched": _fetched(rep.fetched),
        })
    else:
        click.echo(f"Image:            {rep.image.name}")
        click.echo(f"Efficiency:       {e.score * 100:.4f} %")
        click.echo(f"Wasted bytes:     {e.wasted_bytes} ({human_size(e.wasted_bytes)}) "
                   f"in {len(e.wasted)} files overwritten or removed by later layers")
        click.echo(f"dive wasted:      {e.dive_wasted_bytes} "
                   f"({human_size(e.dive_wasted_bytes)}), "
                   f"{e.user_wasted_ratio * 100:.2f} % of the layers above the first")
        click.echo(f"Layer content:    {human_size(e.total_bytes)} in {len(e.layer_bytes)} "
                   "layers")
        if e.wasted and top:
            click.echo("")
            click.echo(table([[human_size(w.size), str(w.layer), str(w.by_layer), w.how, w.path]
                              for w in e.wasted[:top]],
                             ["SIZE", "LAYER", "BY", "HOW", "PATH"]))
    if min_efficiency is not None and e.score < min_efficiency:
        # Exit 1 (SPEC.md): the report above is still printed in full.
        raise OcikitError(f"{rep.image.name}: efficiency {e.score:.4f} is under "
                          f"{min_efficiency}")


__all__ = ["diff", "efficiency"]
