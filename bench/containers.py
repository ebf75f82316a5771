"""Containers: ``ocikit run --rm busybox true`` vs podman and runc; disk per created container."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from bench.common import OCIKIT, ocikit_env, report, run, timed
from fixtures.images import write_busybox
from fixtures.registry import RegistryServer

# This machine: crun refuses the hybrid cgroup setup, runc accepts it; the
# hard nofile limit of 20000 is below podman's default.
PODMAN_OPTS = ["--runtime", "runc", "--cgroup-manager", "cgroupfs"]
PODMAN_RUN = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096", "--network", "none"]


def _du(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def bench_run(work: Path, rounds: int) -> None:
    layout = work / "busybox-layout"
    write_busybox(layout)
    reg = RegistryServer(work / "registry").start()
    try:
        ref = f"{reg.host}/bench/busybox:latest"
        run(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:latest",
             f"docker://{ref}"])
        store = work / "store"
        env = ocikit_env(store)
        proot, prun = work / "podman-root", work / "podman-run"
        podman = ["podman", "--root", str(proot), "--runroot", str(prun), *PODMAN_OPTS]
        run([OCIKIT, "pull", "-q", ref], env)
        run([*podman, "pull", "-q", "--tls-verify=false", ref])
        bundle = work / "bundle"
        run([OCIKIT, "unpack", "--bundle", ref, str(bundle)], env)
        spec = json.loads((bundle / "config.json").read_text())
        spec["process"]["args"] = ["/bin/true"]
        spec["process"]["terminal"] = False
        (bundle / "config.json").write_text(json.dumps(spec))
        # one untimed round each, so caches (and .pyc files) are warm
        run([OCIKIT, "run", "--rm", ref, "true"], env)
        run([*podman, "run", "--rm", *PODMAN_RUN, ref, "true"])
        ours, theirs, runc = [], [], []
        for i in range(rounds):
            ours.append(timed([OCIKIT, "run", "--rm", ref, "true"], env))
            theirs.append(timed([*podman, "run", "--rm", *PODMAN_RUN, ref, "true"]))
            runc.append(timed(["runc", "run", "--bundle", str(bundle), f"ocikit-bench-{i}"]))
        report("run --rm true", ours, theirs, "podman run --rm")
        report("run --rm true", ours, runc, "runc run (bundle ready)")

        n = 50
        before = _du(store)
        for i in range(n):
            run([OCIKIT, "create", "--name", f"b{i}", ref, "true"], env)
        ours_disk = (_du(store) - before) / n
        before = _du(proot)
        for i in range(n):
            run([*podman, "create", "--name", f"b{i}", *PODMAN_RUN, ref, "true"])
        theirs_disk = (_du(proot) - before) / n
        print(f"disk per created container: ocikit {ours_disk / 1024:.1f} KiB, podman "
              f"{theirs_disk / 1024:.1f} KiB, ratio {ours_disk / theirs_disk:.2f}x", flush=True)
        run([*podman, "rm", "-a", "-f"])
    finally:
        reg.stop()
        subprocess.run(["podman", "--root", str(work / "podman-root"), "--runroot",
                        str(work / "podman-run"), *PODMAN_OPTS, "system", "reset", "-f"],
                       capture_output=True)
        shutil.rmtree(work / "podman-root", ignore_errors=True)
