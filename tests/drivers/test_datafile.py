from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from drivers.core.datafile import DataFileError, load_model


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    port: int


class Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    items: list[Item]


def test_errors_name_file_line_and_dotted_field(tmp_path: Path) -> None:
    f = tmp_path / "d.yaml"
    f.write_text(
        "name: x\nitems:\n  - id: a\n    port: 1\n  - id: b\n    port: notanint\n    colour: red\n"
    )
    with pytest.raises(DataFileError) as ei:
        load_model(Doc, f)
    lines = str(ei.value).splitlines()
    assert f"{f}:6: items.1.port: " in lines[0]
    assert lines[1] == f"{f}:7: items.1.colour: unknown key"


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("name: x\nitems: [\n")
    with pytest.raises(DataFileError, match=r"bad.yaml:\d+: <root>: invalid YAML"):
        load_model(Doc, f)
    with pytest.raises(DataFileError, match="file not found"):
        load_model(Doc, tmp_path / "nope.yaml")


def test_missing_field_points_at_parent(tmp_path: Path) -> None:
    f = tmp_path / "d.yaml"
    f.write_text("name: x\nitems:\n  - id: a\n")
    with pytest.raises(DataFileError) as ei:
        load_model(Doc, f)
    assert str(ei.value) == f"{f}:3: items.0.port: Field required"
