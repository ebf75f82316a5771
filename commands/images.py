"""Image commands: pull, images, inspect, tags, history, tag, rmi, gc."""

from __future__ import annotations

import sys
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
from ocikit.errors import NotFoundError, OcikitError, UsageError
from ocikit.oci.descriptor import ImageConfig, Manifest
from ocikit.oci.digest import Digest
from ocikit.oci.layout import INDEX_DIGEST
from ocikit.oci.location import RegistryLocation, parse_location
from ocikit.oci.reference import Reference


def _registry_ref(text: str) -> Reference:
    loc = parse_location(text)
    if not isinstance(loc, RegistryLocation):
        raise UsageError(f"{text}: expected a registry reference")
    return loc.ref


@click.command()
@click.option("-q", "--quiet", is_flag=True, help="print only the digest")
@platform_option()
@click.option("--progress", "progress_mode", type=click.Choice(MODES), default="auto",
              show_default=True, help="how to show progress on stderr")
@click.argument("ref")
@click.pass_context
def pull(ctx: click.Context, quiet: bool, platform: str | None, progress_mode: str,
         ref: str) -> None:
    """Fetch an image's manifest, config and layers into the store."""
    from ocikit.pulling import pull as do_pull
    from ocikit.pulling import pull_local

    loc = parse_location(ref)
    store = get_store(ctx)
    if not isinstance(loc, RegistryLocation):
        # oci:DIR[:TAG] and docker-archive:FILE are sources too: import them.
        result = pull_local(loc, store, platform=parse_platform(platform))
        click.echo(str(result.digest) if quiet else result.name)
        return
    reference = loc.ref
    renderer = make_renderer(progress_mode, quiet)
    try:
        result = do_pull(reference, store, make_client(renderer),
                         platform=parse_platform(platform),
                         progress=renderer)
    finally:
        close_renderer(renderer)
    if quiet:
        click.echo(str(result.digest))
    else:
        state = "Downloaded newer image" if result.downloaded else "Image is up to date"
        click.echo(f"Digest: {result.digest}", err=True)
        click.echo(f"Status: {state} for {reference}", err=True)
        click.echo(str(reference))


def _image_rows(ctx: click.Context) -> list[dict[str, Any]]:
    store = get_store(ctx)
    rows = []
    for e in store.entries():
        info: dict[str, Any] = {"Name": e.name, "Repository": "", "Tag": "",
                                "Digest": e.descriptor.annotations.get(INDEX_DIGEST)
                                or str(e.descriptor.digest),
                                "ManifestDigest": str(e.descriptor.digest),
                                "Id": "", "Created": "", "Size": 0}
        try:
            ref = Reference.parse(e.name)
            info["Repository"] = ref.name
            info["Tag"] = ref.tag
        except OcikitError:
            info["Repository"] = e.name
        try:
            m = store.read_manifest(e.descriptor).parsed
            if isinstance(m, Manifest):
                info["Id"] = str(m.config.digest)
                info["Size"] = m.config.size + sum(d.size for d in m.layers)
                cfg = ImageConfig.parse(store.read_blob(m.config.digest))
                info["Created"] = cfg.created
        except OcikitError:
            pass
        rows.append(info)
    return rows


@click.command()
@click.option("--json", "as_json", is_flag=True, help="JSON output")
@click.option("-q", "--quiet", is_flag=True, help="print only image names")
@click.pass_context
def images(ctx: click.Context, as_json: bool, quiet: bool) -> None:
    """List the images in the store."""
    rows = _image_rows(ctx)
    if as_json:
        print_json(rows)
        return
    if quiet:
        for r in rows:
            click.echo(r["Name"])
        return
    click.echo(table(
        [[r["Repository"], r["Tag"] or "<none>", Digest.parse(r["Id"]).short if r["Id"] else "",
          r["Created"][:19].replace("T", " "), human_size(r["Size"])] for r in rows],
        ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"]))


def _inspect_doc(img: Any) -> dict[str, Any]:
    m: Manifest = img.parsed
    cfg = img.config
    return {
        "Name": img.name,
        "Digest": str(img.digest),
        "ManifestDigest": str(img.manifest.digest),
        "MediaType": img.manifest.media_type,
        "IndexDigest": str(img.index.digest) if img.index is not None else None,
        "Platform": str(cfg.platform),
        "Source": img.source,
        "Id": str(m.config.digest),
        "Created": cfg.created,
        "Architecture": cfg.architecture,
        "Os": cfg.os,
        "Config": cfg.raw.get("config") or {},
        "RootFS": {"DiffIds": [str(d) for d in cfg.diff_ids]},
        "Layers": [{"Digest": str(d.digest), "MediaType": d.media_type, "Size": d.size}
                   for d in m.layers],
        "Size": m.config.size + sum(d.size for d in m.layers),
        "Annotations": dict(m.annotations),
    }


@click.command()
@click.option("--raw", is_flag=True, help="print the manifest (or index) bytes as stored")
@click.option("--config", "config", is_flag=True, help="print the image config")
@platform_option()
@click.argument("ref")
@click.pass_context
def inspect(ctx: click.Context, raw: bool, config: bool, platform: str | None, ref: str) -> None:
    """Show a stored or remote image as JSON."""
    from ocikit.resolve import REMOTE_READ, open_image

    img = open_image(ref, get_store(ctx), platform=parse_platform(platform), mode=REMOTE_READ,
                     client_factory=make_client)
    out = sys.stdout.buffer
    if raw:
        out.write(img.index.data if img.index is not None and platform is None
                  else img.manifest.data)
        out.flush()
    elif config:
        out.write(img.config_bytes)
        out.flush()
    else:
        print_json(_inspect_doc(img))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="JSON output")
@click.argument("repo")
def tags(as_json: bool, repo: str) -> None:
    """List a remote repository's tags."""
    ref = _registry_ref(repo)
    names = make_client().list_tags(ref)
    if as_json:
        print_json(names)
    else:
        for t in names:
            click.echo(t)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="JSON output")
@click.option("--no-trunc", is_flag=True, help="do not shorten CREATED BY")
@platform_option()
@click.argument("ref")
@click.pass_context
def history(ctx: click.Context, as_json: bool, no_trunc: bool, platform: str | None,
            ref: str) -> None:
    """One row per history entry, newest first, as docker history."""
    from ocikit.history import image_history
    from ocikit.resolve import REMOTE_READ, open_image

    img = open_image(ref, get_store(ctx), platform=parse_platform(platform), mode=REMOTE_READ,
                     client_factory=make_client)
    rows = image_history(img)
    if as_json:
        print_json([r.to_dict() for r in rows])
        return

    def by(s: str) -> str:
        return s if no_trunc or len(s) <= 45 else s[:44] + "…"

    click.echo(table(
        [[r.created[:19].replace("T", " ") or "-", by(r.created_by),
          "0B" if r.empty_layer else human_size(r.size),
          "0B" if r.empty_layer else human_size(r.uncompressed_size),
          Digest.parse(r.digest).short if r.digest else "<missing>"] for r in rows],
        ["CREATED", "CREATED BY", "SIZE", "UNCOMPRESSED", "LAYER"]))


@click.command()
@click.argument("src")
@click.argument("dest")
@click.pass_context
def tag(ctx: click.Context, src: str, dest: str) -> None:
    """Give a stored image another name."""
    from ocikit.resolve import find_stored

    store = get_store(ctx)
    src_ref = _registry_ref(src)
    dest_ref = _registry_ref(dest)
    # From the look-up to the new name, a concurrent `rmi SRC` must not let gc
    # collect the blobs the new name is about to point at.
    with store.writing():
        desc = find_stored(store, src_ref)
        if desc is None:
            raise NotFoundError(f"image {src_ref} is not in the store")
        extra = {k: v for k, v in desc.annotations.items() if k == INDEX_DIGEST}
        store.set_name(str(dest_ref), desc, extra)


@click.command()
@click.option("-f", "--force", is_flag=True, help="remove even if a container uses it")
@click.argument("refs", nargs=-1, required=True)
@click.pass_context
def rmi(ctx: click.Context, force: bool, refs: tuple[str, ...]) -> None:
    """Remove images from the store (their blobs go unless another image uses them)."""
    from ocikit.gc import collect
    from ocikit.resolve import find_stored

    store = get_store(ctx)
    for r in refs:
        ref = _registry_ref(r)
        desc = find_stored(store, ref)
        if desc is None:
            raise NotFoundError(f"no image named {ref} in the store")
        if not force:
            _refuse_if_used(store, ref, desc)
        store.remove_name(str(ref))
        click.echo(f"Untagged: {ref}")
    try:
        result = collect(store, partials=False)
    except OcikitError as e:
        # The names are gone as asked; only the space is not given back yet.
        click.echo(f"ocikit: warning: {e}", err=True)
        return
    if result.blobs_removed:
        click.echo(f"Deleted {result.blobs_removed} blobs ({human_size(result.bytes_freed)})",
                   err=True)


def _refuse_if_used(store: Any, ref: Reference, desc: Any) -> None:
    """As docker: an image a container was created from is not removed without -f."""
    if not store.containers_dir.is_dir() or not any(store.containers_dir.iterdir()):
        return
    from ocikit.oci.runtime.containers import list_containers

    try:
        m = store.read_manifest(desc).parsed
    except OcikitError:
        return
    if not isinstance(m, Manifest):
        return
    users = [c.name for c in list_containers(store.containers_dir)
             if c.spec.image_id == str(m.config.digest)]
    others = [e for e in store.entries()
              if e.name != str(ref) and e.descriptor.digest == desc.digest]
    if users and not others:
        raise OcikitError(f"image {ref} is in use by container(s) {', '.join(users)} "
                          "(remove them first, or use -f)")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="JSON output")
@click.pass_context
def gc(ctx: click.Context, as_json: bool) -> None:
    """Remove blobs no image uses and partial downloads."""
    from ocikit.gc import collect

    result = collect(get_store(ctx))
    if as_json:
        print_json({"BlobsRemoved": result.blobs_removed, "BytesFreed": result.bytes_freed,
                    "PartialsRemoved": result.partials_removed,
                    "SnapshotsRemoved": result.snapshots_removed})
    else:
        click.echo(f"removed {result.blobs_removed} blobs, {result.snapshots_removed} "
                   f"snapshots and {result.partials_removed} partial downloads, "
                   f"{human_size(result.bytes_freed)} freed")


