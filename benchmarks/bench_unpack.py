"""Load + unpack of the debian-python image: sandbox-kernel vs ``umoci unpack``.

Both start from the same OCI image (ours from the oci-archive, umoci from the
same image as an OCI layout directory), both write to the same file system,
and each run starts after ``sync`` so no run pays for the previous one's
writeback. Prints both medians and the ratio.

    .venv/bin/python benchmarks/bench_unpack.py [--runs 5] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from sandbox_kernel.runtime import Store, build, load, save

REF = "localhost/debian-python:latest"


def timed(fn) -> float:
    subprocess.run(["sync"], check=True)
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", default="/var/tmp", help="where both unpack (same file system for both)")
    args = parser.parse_args()
    umoci = shutil.which("umoci")
    if umoci is None:
        print("umoci is not installed: run scripts/setup.sh", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="sk-bench-", dir=args.dir) as tmp:
        work = Path(tmp)
        source = Store(work / "source")
        build(source, "debian-python")
        image = source.resolve(REF)
        archive = work / "image.tar"
        save(source, [REF], archive)
        layout = work / "layout"
        layout.mkdir()
        with tarfile.open(archive) as tf:
            tf.extractall(layout, filter="data")  # our own archive, for umoci's benefit
        raw = sum(1 for _ in tarfile.open(fileobj=open(source.blob_path(image.layers[0]["digest"]), "rb"), mode="r|gz"))
        print(f"image {REF}: {image.size / 1e6:.1f} MB compressed, {raw} entries, {len(image.layers)} layer(s)")

        ours, theirs = [], []
        for i in range(args.runs):
            target = work / f"store-{i}"

            def run_ours(target: Path = target) -> None:
                store = Store(target)
                [loaded] = load(store, archive)
                store.unpack(loaded.image)

            ours.append(timed(run_ours))
            shutil.rmtree(target)
            bundle = work / f"bundle-{i}"
            theirs.append(timed(lambda bundle=bundle: subprocess.run(
                [umoci, "unpack", "--image", f"{layout}:latest", str(bundle)],
                check=True, capture_output=True)))
            shutil.rmtree(bundle)

    ours_median, theirs_median = statistics.median(ours), statistics.median(theirs)
    print(f"sandbox-kernel load+unpack: median {ours_median * 1000:.0f} ms  runs {[round(t * 1000) for t in ours]}")
    print(f"umoci unpack:               median {theirs_median * 1000:.0f} ms  runs {[round(t * 1000) for t in theirs]}")
    print(f"ratio: sandbox-kernel takes {ours_median / theirs_median:.2f}x umoci's time "
          f"({theirs_median / ours_median:.1f}x faster; target >= 3x)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
