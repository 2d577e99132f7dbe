"""The first cell's report: where course_lib came from (pip's PEP 610 record), torch, device."""

import json
from pathlib import Path

import pytest
import torch

from course_lib.env import install_source, setup_report, shown_path, train_steps


def test_install_source_reads_pips_record():
    git = json.dumps({"url": "https://github.com/o/course", "vcs_info": {"vcs": "git", "commit_id": "0123456789abcdef"}})
    assert install_source(git, "/x/course_lib") == \
        "git+https://github.com/o/course @ 0123456789 (pip install)"
    editable = json.dumps({"url": "file:///home/me/course", "dir_info": {"editable": True}})
    assert install_source(editable, "/x") == "/home/me/course (editable install)"
    wheel = json.dumps({"url": "file:///tmp/course_lib-0.1.0-py3-none-any.whl", "archive_info": {}})
    assert install_source(wheel, "/x") == "file:///tmp/course_lib-0.1.0-py3-none-any.whl (pip install)"
    # no record (a checkout on sys.path): the folder that holds the package
    assert install_source(None, "/repo/course_lib") == f"{Path('/repo').resolve()} (a folder on sys.path, not installed)"
    assert install_source("not json", "/repo/course_lib") == f"{Path('/repo').resolve()} (a folder on sys.path, not installed)"


def test_setup_report_names_this_copy_torch_and_the_device(monkeypatch):
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    lines = setup_report().splitlines()
    import course_lib

    assert lines[0].startswith(f"course_lib {course_lib.__version__} from ")
    # the copy imported here (a checkout on sys.path or the editable install of this folder),
    # named relative to the working directory: no folder of this machine in a notebook's output
    repo = Path(course_lib.__file__).resolve().parent.parent
    where = lines[0].removeprefix(f"course_lib {course_lib.__version__} from ").split(" (")[0]
    assert where == shown_path(repo) and (Path.cwd() / where).resolve() == repo
    assert lines[1].startswith(f"torch {torch.__version__} | device cpu") and lines[1].endswith("scale small")


def test_shown_path_is_relative_under_the_working_folder_and_its_parent(tmp_path, monkeypatch):
    (tmp_path / "repo" / "notebooks").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "repo" / "notebooks")
    assert shown_path(tmp_path / "repo" / "notebooks" / "exports" / "a.png") == "exports/a.png"
    assert shown_path("exports/a.png") == "exports/a.png"
    assert shown_path(tmp_path / "repo") == ".."
    assert shown_path(tmp_path / "repo" / "exports" / "plots") == "../exports/plots"
    assert shown_path(tmp_path / "elsewhere") == str((tmp_path / "elsewhere").resolve())  # two levels up: in full
    monkeypatch.chdir(tmp_path / "repo")
    assert shown_path(tmp_path / "repo" / "notebooks") == "notebooks"
    outside = Path("/").resolve() / "no-such-folder" / "x"
    assert shown_path(outside) == str(outside)  # neither under the working folder nor its parent


def test_train_steps_follows_course_steps(monkeypatch):
    monkeypatch.delenv("COURSE_STEPS", raising=False)
    assert train_steps(3000) == 3000
    monkeypatch.setenv("COURSE_STEPS", "600")
    assert train_steps(3000) == 600
    monkeypatch.setenv("COURSE_STEPS", "many")
    with pytest.raises(ValueError, match="COURSE_STEPS"):
        train_steps(3000)
