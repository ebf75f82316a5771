"""``run`` and ``create`` of a stored image, without click or the image model.

Starting a container is the one command where ocikit's own start-up time is
the user's waiting time: the container itself needs about 20 ms here, while
importing click costs ~40 ms, typing ~15 ms and the typed image model
(layout, descriptors, references) ~40 ms more. So ``ocikit/__main__.py``
sends ``run``/``create`` here first. This module reads the command line
with ``runflags`` (the table click uses too) and the image with
``storeview``, then creates and runs the container with the same runtime
functions as the full command (``container_spec``, ``create_container``,
``run_foreground``), so the container is the one the full path would make.

Whatever is not the plain case (an option click must check or explain, a
reference that needs a pull, a platform choice, a layout or archive source,
an image whose snapshots are not unpacked yet) returns None before anything
was changed, and the full command line takes over.

Imports here and in what it uses must stay light: no click, typing, dataclasses,
pathlib or the image model (tests/test_fastrun.py checks what a start
imports).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys

from ocikit.commands import runflags
from ocikit.commands.exits import debug_requested, exit_code_for, setup_errors
from ocikit.errors import InvalidReferenceError
from ocikit.oci import storeview
from ocikit.oci.refname import DEFAULT_TAG, split_name

# Not typing.TYPE_CHECKING: importing typing costs ~15 ms at every container start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

    from ocikit.oci.runtime.containers import Container

COMMANDS = ("run", "create")

# Sources other than the store's names, which the full path reads (location.py).
_SOURCE_PREFIXES = ("oci:", "docker-archive:", "docker://")


def stored_name(text: str) -> str | None:
    """The full reference ``text`` names in the store, when it is a plain tag
    reference (``busybox``, ``host:5000/app:1``); None for anything else."""
    if not text or text != text.strip() or len(text) > 1024 or "@" in text or \
            text.startswith(_SOURCE_PREFIXES):
        return None
    try:
        registry, repository, tag = split_name(text, text)
    except InvalidReferenceError:
        return None
    return f"{registry}/{repository}:{tag or DEFAULT_TAG}"


@contextlib.contextmanager
def _writing(root: str) -> Iterator[bool]:
    """The store's shared writer lock (``Store.writing``), so that a gc waits
    until the container records the snapshots it uses. False if there is no
    store to lock (then there is no image either)."""
    try:
        fd = os.open(os.path.join(root, storeview.TMP, storeview.GC_LOCK),
                     os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    except OSError:
        yield False
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield True
    finally:
        os.close(fd)


def _create(root: str, parsed: runflags.ParsedRun) -> Container | None:
    from ocikit.oci.runtime.containers import create_container
    from ocikit.oci.runtime.options import ImageDefaults, ImageRef, container_spec

    name = stored_name(parsed.image)
    if name is None:
        return None
    with _writing(root) as locked:
        image = storeview.find_runnable(root, name) if locked else None
        if image is None:
            return None
        with setup_errors():
            opts = runflags.run_options(parsed.values, parsed.command)
            ref = ImageRef(name=image.name, image_id=image.config_digest,
                           manifest_digest=image.manifest_digest,
                           manifest_type=image.manifest_type, snapshots=image.snapshots)
            spec = container_spec(ref, ImageDefaults.from_json(image.config), opts,
                                  os.path.join(root, "volumes"))
            return create_container(os.path.join(root, "containers"), spec)


def main(argv: list[str]) -> int | None:
    """Run ``argv`` (``run ...`` or ``create ...``); None leaves it to the full CLI."""
    from ocikit.settings import store_dir

    command = argv[0]
    flags = (runflags.DETACH, *runflags.RUN_FLAGS) if command == "run" else runflags.RUN_FLAGS
    parsed = runflags.parse(argv[1:], flags)
    if parsed is None or parsed.values["platform"] is not None:
        return None
    try:
        container = _create(store_dir(), parsed)
        if container is None:
            return None
        if command == "create" or parsed.values["detach"]:
            if command == "run":
                from ocikit.oci.runtime.containers import start_detached

                start_detached(container)
            sys.stdout.write(container.id + "\n")
            return 0
        from ocikit.oci.runtime.containers import run_foreground

        return run_foreground(container)
    except (Exception, KeyboardInterrupt) as e:
        return exit_code_for(e, debug_requested(argv))
