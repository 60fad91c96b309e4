"""The local stack notices a migration edited after its database applied it."""

from pathlib import Path

from worker import stack


def _files(tmp_path: Path, **texts: str) -> list[Path]:
    paths = []
    for name, text in texts.items():
        path = tmp_path / f"{name}.sql"
        path.write_text(text)
        paths.append(path)
    return paths


def test_changed_migrations__first_sight_records_and_an_edit_is_named(tmp_path: Path) -> None:
    recorded: dict[str, str] = {}
    files = _files(tmp_path, a="create table a();", b="create table b();")
    assert stack.changed_migrations(recorded, files) == []
    assert set(recorded) == {"a.sql", "b.sql"}

    files[1].write_text("create table b(id int);")
    assert stack.changed_migrations(recorded, files) == ["b.sql"]
    # the applied digest is kept: the warning repeats until the stack is rebuilt
    assert stack.changed_migrations(recorded, files) == ["b.sql"]


def test_changed_migrations__a_new_file_is_not_a_change(tmp_path: Path) -> None:
    recorded: dict[str, str] = {}
    stack.changed_migrations(recorded, _files(tmp_path, a="select 1;"))
    assert stack.changed_migrations(recorded, _files(tmp_path, a="select 1;", c="select 3;")) == []
    assert "c.sql" in recorded


def test_state__keeps_the_record_across_saves(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(stack, "STACK_DIR", tmp_path)
    monkeypatch.setattr(stack, "STATE_FILE", tmp_path / "state.json")
    state = stack.State(port=1, password="p", worker_password="w", jwt_secret="j", secret_key="s")
    state.migration_digests["a.sql"] = "0123"
    state.save()
    loaded = stack.State.load()
    assert loaded is not None and loaded.migration_digests == {"a.sql": "0123"}
