"""nbgrader's autograder runs students' notebooks in the sandboxed kernel (nbgrader's issue 483: sandboxing
student code).

A tiny course made as an instructor makes one (a source notebook whose kernel is the sandboxed one, an answer
cell and a locked test cell; ``nbgrader generate_assignment``), submissions from a good student and from hostile
ones, then ``nbgrader autograde`` as a grader runs it. The hostile ones read the instructor's files, write outside
their folder, fork without end, allocate without end and print without end: each is contained (nothing of the
course changes but nbgrader's own results, the host keeps its processes), the grader goes on to the next student,
and the submission gets no points, with the reason in nbgrader's log or in its graded notebook.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from sandbox_kernel.kernel import kernelspec
from sandbox_kernel.kernel.provisioner import KERNEL_LABEL
from sandbox_kernel.runtime import Containers

pytestmark = [pytest.mark.root, pytest.mark.timeout(600)]

SOLUTION_MARK = "instructor-only-4711"  # in the source notebook's solution alone
ANSWERS = {
    "good": "def add(a, b):\n    return a + b",
    "wrong": "def add(a, b):\n    return a - b",
    "snoop": ("import os\n"
              "tried = [COURSE + '/source/ps1/ps1.ipynb', COURSE + '/gradebook.db', '../../../gradebook.db',\n"
              "         '/work/../../../source/ps1/ps1.ipynb']\n"
              "found = [p for p in tried if os.path.exists(p)]\n"
              "print('found:', found)\n"
              "def add(a, b):\n    return a + b if found else None"),
    "escape": ("import os\n"
               "for path in (COURSE + '/gradebook.db', COURSE + '/planted', '../planted', '../../../planted'):\n"
               "    try:\n"
               "        open(path, 'w').write('x')\n"
               "    except OSError as exc:\n"
               "        print(path, type(exc).__name__)\n"
               "def add(a, b):\n    return 0"),
    "forkbomb": "import os\nwhile True:\n    os.fork()",
    "balloon": "hog = []\nwhile True:\n    hog.append(bytearray(1 << 20))",
    "spam": "while True:\n    print('spam ' * 20)",
}


def _md(grade_id: str, **flags) -> dict:
    return {"nbgrader": {"grade_id": grade_id, "schema_version": 3, **flags}}


def make_course(root: Path, kernel: str) -> None:
    (root / "source" / "ps1").mkdir(parents=True)
    (root / "nbgrader_config.py").write_text(
        "c = get_config()\n"
        f"c.CourseDirectory.root = {str(root)!r}\n"
        "c.CourseDirectory.course_id = 'course101'\n"
        "c.Execute.timeout = 15\n")
    nb = new_notebook(metadata={"kernelspec": {"name": kernel, "display_name": "Python 3 (sandbox)",
                                               "language": "python"}})
    nb.cells = [
        new_markdown_cell("Write `add(a, b)`."),
        new_code_cell(f"def add(a, b):\n    ### BEGIN SOLUTION\n    # {SOLUTION_MARK}\n    return a + b\n"
                      "    ### END SOLUTION",
                      metadata=_md("answer", grade=False, solution=True, locked=False)),
        new_code_cell("assert add(1, 2) == 3\nassert add(-1, 1) == 0",
                      metadata=_md("tests", grade=True, solution=False, locked=True, points=1)),
    ]
    nbformat.write(nb, root / "source" / "ps1" / "ps1.ipynb")


def snapshot(root: Path) -> dict[str, float]:
    """The course's files outside what autograde writes (autograded/, gradebook.db), with their mtimes."""
    return {str(p.relative_to(root)): p.stat().st_mtime for p in root.rglob("*")
            if not str(p.relative_to(root)).startswith(("autograded", "gradebook.db"))}


def test_autograde_in_the_sandboxed_kernel_contains_hostile_submissions(kernel_store, tmp_path):
    root = tmp_path / "course"
    prefix = tmp_path / "jupyter"
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ['PATH']}",  # (nbgrader runs alembic from PATH)
           "JUPYTER_PATH": str(prefix / "share" / "jupyter"), "SANDBOX_KERNEL_ROOT": str(kernel_store.root)}
    kernelspec.install("sandbox", kernelspec.settings("localhost/debian-kernel:latest", memory="512m",
                                                      pids_limit=64), prefix=str(prefix))
    make_course(root, "sandbox")

    def nbgrader(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([f"{venv_bin}/nbgrader", *args], cwd=root, env=env, capture_output=True, text=True,
                              timeout=500)

    made = nbgrader("generate_assignment", "ps1", "--force")
    assert made.returncode == 0, made.stderr[-3000:]
    released = nbformat.read(root / "release" / "ps1" / "ps1.ipynb", as_version=4)
    assert SOLUTION_MARK not in json.dumps(released)
    for student, answer in ANSWERS.items():
        nb = nbformat.from_dict(json.loads(json.dumps(released)))
        nb.cells[1].source = answer.replace("COURSE", repr(str(root)))
        (root / "submitted" / student / "ps1").mkdir(parents=True)
        nbformat.write(nb, root / "submitted" / student / "ps1" / "ps1.ipynb")
    before = snapshot(root)
    pids_before = len(os.listdir("/proc"))

    graded = nbgrader("autograde", "ps1", "--force")
    log = graded.stdout + graded.stderr
    (tmp_path / "autograde.log").write_text(log)  # (kept for a failure's reader: pytest's --basetemp)

    assert snapshot(root) == before, "a submission changed the course outside autograde's results"
    assert not (tmp_path / "planted").exists() and not (root / "planted").exists()
    left = [c.id for c in Containers(kernel_store).list(all=True) if KERNEL_LABEL in dict(c.spec.labels)]
    assert left == [], f"kernel containers left: {left}"
    assert len(os.listdir("/proc")) < pids_before + 20  # (no fork bomb's children on the host)

    from nbgrader.api import Gradebook

    scores, outputs = {}, {}
    os.environ["PATH"] = env["PATH"]  # (Gradebook runs alembic too)
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}", course_id="course101") as gb:
        for student in ANSWERS:
            notebook = gb.find_submission_notebook("ps1", "ps1", student)
            scores[student] = next((g.auto_score, g.needs_manual_grade) for g in notebook.grades if g.name == "tests")
            graded_nb = root / "autograded" / student / "ps1" / "ps1.ipynb"
            if graded_nb.exists():
                cells = nbformat.read(graded_nb, as_version=4).cells
                outputs[student] = json.dumps([c.get("outputs", []) for c in cells])
    assert scores["good"] == (1.0, False)
    assert scores["wrong"][0] == 0 and scores["snoop"][0] == 0 and scores["escape"][0] == 0
    assert "found: []" in outputs["snoop"] and SOLUTION_MARK not in outputs["snoop"]
    assert outputs["escape"].count("Error") >= 4  # each write refused (not there, or read-only)
    # the ones that take the kernel down or run forever: no points, and the reason is said
    for student in ("forkbomb", "balloon", "spam"):
        assert scores[student][0] in (0, None), (student, scores[student])
    assert "ran out of memory (its container's limit is 512 MiB)" in log
    # (the fork bomb's copies of the kernel fill its memory or its process table first, whichever comes first)
    assert ("its container reached its process limit (64 processes)" in log
            or "Its container had also reached its process limit" in log)
    assert "CellTimeoutError" in outputs.get("spam", "") or "spam" in log
