import pytest

from course_lib.paths import data_dir


def test_data_dir_found_from_nested_folders(tmp_path, monkeypatch):
    root = data_dir().parent
    for sub in ["notebooks/01_foundations", "autograded/alice/01_foundations", "tests"]:
        folder = root / sub
        if not folder.exists():
            continue
        monkeypatch.chdir(folder)
        assert data_dir() == root / "data"


def test_data_dir_from_elsewhere_falls_back_to_package(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (data_dir() / "course-model" / "config.json").is_file()


def test_course_data_env_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_DATA", str(tmp_path))
    assert data_dir() == tmp_path.resolve()
    monkeypatch.setenv("COURSE_DATA", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="COURSE_DATA"):
        data_dir()
