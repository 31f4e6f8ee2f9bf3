"""Run a notebook headless (nbclient) and keep what ran: the executed notebook, an HTML copy, the image digests.

    .venv/bin/python scripts/run_notebook.py NOTEBOOK... [--out DIR] [--in-place] [--report-image REF]

Each notebook's metadata gets ``sandbox_kernel.images``: every image its cells name (``--image REF``,
``%container run ... REF``, and the default image of ``%%container``) with the manifest digest it had
in the store when the notebook ran, so a reader knows exactly what ran. ``--in-place`` writes the
outputs back into the notebook (how the stored outputs that nbval checks are made). Exit status 1
when a cell failed that is not tagged ``raises-exception``.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from sandbox_kernel.notebook.magics import DEFAULT_IMAGE
from sandbox_kernel.runtime import SandboxError, Store

IMAGE_OPTION = re.compile(r"--image[ =](\S+)")
RUN_LINE = re.compile(r"%container run (?:--?\S+(?: (?!localhost/)\S+)? )*(\S+)")


def images_named(nb: nbformat.NotebookNode) -> list[str]:
    refs: list[str] = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        source = cell.source
        if source.startswith("%%container") and "--image" not in source.splitlines()[0]:
            refs.append(DEFAULT_IMAGE)
        refs += IMAGE_OPTION.findall(source) + RUN_LINE.findall(source)
    return list(dict.fromkeys(refs))


def record_images(nb: nbformat.NotebookNode, store: Store) -> dict[str, str]:
    found = {}
    for ref in images_named(nb):
        try:
            found[ref] = store.resolve(ref).manifest_digest
        except SandboxError:
            continue  # made by the notebook itself and gone, or never there
    nb.metadata.setdefault("sandbox_kernel", {})["images"] = found
    return found


def failures(nb: nbformat.NotebookNode) -> list[str]:
    out = []
    for number, cell in enumerate(nb.cells, start=1):
        if cell.cell_type != "code" or "raises-exception" in cell.metadata.get("tags", []):
            continue
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                out.append(f"cell {number}: {output.get('ename')}: {output.get('evalue')}")
    return out


def run(path: Path, out: Path | None, in_place: bool, store: Store) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    records = record_images(nb, store)  # before: images a notebook removes at its end are still there
    began = time.monotonic()
    client = NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    nb.metadata["sandbox_kernel"]["images"] = {**records, **record_images(nb, store)}
    problems = failures(nb)
    print(f"{path.name}: ran in {time.monotonic() - began:.1f} s, "
          f"{'no errors' if not problems else f'{len(problems)} failed cell(s)'}")
    for problem in problems:
        print(f"  {problem}")
    for ref, digest in nb.metadata["sandbox_kernel"]["images"].items():
        print(f"  image {ref}: {digest}")
    if in_place:
        nbformat.write(nb, path)
    if out is not None:
        from nbconvert import HTMLExporter

        out.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out / path.name)
        html, _ = HTMLExporter().from_notebook_node(nb)
        (out / path.with_suffix(".html").name).write_text(html)
        print(f"  executed notebook: {out / path.name}")
        print(f"  HTML copy:         {out / path.with_suffix('.html').name}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, help="where the executed notebooks and their HTML copies go")
    parser.add_argument("--in-place", action="store_true", help="store the outputs in the notebooks themselves")
    parser.add_argument("--report-image", action="append", default=[], help="print this image's digest after")
    args = parser.parse_args()
    store = Store()
    problems = []
    for path in args.notebooks:
        problems += run(path, args.out, args.in_place, store)
    for ref in args.report_image:
        try:
            image = store.resolve(ref)
            print(f"snapshot {ref}: {image.manifest_digest} (image id {image.id})")
        except SandboxError as exc:
            print(f"snapshot {ref}: {exc}")
            problems.append(str(exc))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
