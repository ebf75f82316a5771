"""``ocikit unpack``: an image's root filesystem (or a runtime bundle) at DEST."""

from __future__ import annotations

from pathlib import Path

import click

from ocikit.commands.common import get_store, make_client, parse_platform, platform_option
from ocikit.commands.render import MODES, close_renderer, make_renderer


@click.command()
@click.option("--bundle", is_flag=True,
              help="write DEST/rootfs and an OCI runtime-spec DEST/config.json")
@click.option("--rootless", is_flag=True, default=None,
              help="do not chown (the default when not root)")
@platform_option()
@click.option("--progress", "progress_mode", type=click.Choice(MODES), default="auto",
              show_default=True, help="how to show progress on stderr")
@click.argument("ref")
@click.argument("dest", type=click.Path(path_type=Path))
@click.pass_context
def unpack(ctx: click.Context, bundle: bool, rootless: bool | None, platform: str | None,
           progress_mode: str, ref: str, dest: Path) -> None:
    """Build the image's root filesystem at DEST (pulling it if it is not stored)."""
    from ocikit.oci.bundle import write_bundle
    from ocikit.oci.unpack import LayerProgress, unpack_image
    from ocikit.resolve import PULL, open_image

    renderer = make_renderer(progress_mode)
    try:
        img = open_image(ref, get_store(ctx), platform=parse_platform(platform), mode=PULL,
                         client_factory=lambda: make_client(renderer), progress=renderer,
                         import_layout=False)
    finally:
        close_renderer(renderer)
    assert img.blobs is not None
    shown: set[int] = set()

    def progress(p: LayerProgress) -> None:
        if progress_mode != "none" and p.index not in shown:
            shown.add(p.index)
            click.echo(f"unpacking layer {p.index + 1}/{p.count} {p.digest}", err=True)

    def warn(message: str) -> None:
        click.echo(f"ocikit: warning: {message}", err=True)

    if bundle:
        write_bundle(img.blobs, img.parsed, img.config, dest, rootless=rootless,
                     progress=progress, warn=warn)
    else:
        unpack_image(img.blobs, img.parsed, img.config, dest, rootless=rootless,
                     progress=progress, warn=warn)
