"""The OCI runtime side of ocikit: containers over overlayfs in their own namespaces.

Modules, lightest first: ``spec`` (what a container runs), ``state`` (its
record on disk), ``containers`` (create/run/start/stop/exec/rm/list, the
API the CLI calls), ``supervisor`` (detached containers), ``process`` and
``mounts`` (what happens in the child), ``libc`` (the syscalls), ``ports``,
``cgroups``, ``volumes`` and ``commit`` (diff and layer tar of the upper dir).
Nothing here imports the registry client: ``run`` must start fast.
"""
