"""Data files (YAML) validated by pydantic, with errors that name file, line and field.

Every data file of the project (station config, register maps, scenarios, step graphs) goes
through `load_model`, so a bad file always reads `FILE:LINE: dotted.field.path: message`.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)

PathKey = tuple[str | int, ...]

# A data file: a path (str or Path) or a file shipped in a package (importlib.resources).
FileRef = Traversable | str


def as_traversable(path: FileRef) -> Traversable:
    return Path(path) if isinstance(path, str) else path


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field or '<root>'}: {self.message}"


class DataFileError(ValueError):
    """One or more problems in a data file; `str()` gives one line per problem."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that records the line of every mapping key and sequence item."""


def _build_index(node: yaml.Node, path: PathKey, index: dict[PathKey, int]) -> None:
    index.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else str(k.value)
            index[(*path, key)] = k.start_mark.line + 1
            _build_index(v, (*path, key), index)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            index[(*path, i)] = item.start_mark.line + 1
            _build_index(item, (*path, i), index)


def read_yaml(path: FileRef) -> tuple[Any, dict[PathKey, int]]:
    """Parse YAML and index the line of every key and item. Raises DataFileError."""
    name = str(path)
    path = as_traversable(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataFileError([Problem(name, 0, "", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataFileError([Problem(name, 0, "", f"cannot read: {e}")]) from None
    try:
        loader = _LineLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else 0
        raise DataFileError([Problem(name, line, "", f"invalid YAML: {e.problem or e}")]) from None
    except yaml.YAMLError as e:
        raise DataFileError([Problem(name, 0, "", f"invalid YAML: {e}")]) from None
    index: dict[PathKey, int] = {}
    if node is not None:
        _build_index(node, (), index)
    return data, index


def line_of(index: dict[PathKey, int], loc: PathKey) -> int:
    """The line of the deepest part of `loc` that exists in the file."""
    for n in range(len(loc), -1, -1):
        line = index.get(tuple(loc[:n]))
        if line is not None:
            return line
    return 0


def problems_from_validation(
    err: ValidationError, file: str, index: dict[PathKey, int], prefix: PathKey = ()
) -> list[Problem]:
    out: list[Problem] = []
    for e in err.errors():
        full = (*prefix, *_file_loc(e["loc"], index, prefix))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        out.append(Problem(file, line_of(index, full), ".".join(str(p) for p in full), msg))
    return out


def _file_loc(loc: tuple[int | str, ...], index: dict[PathKey, int], prefix: PathKey) -> PathKey:
    """Drop pydantic's own loc parts (union tags, validator names): not keys of the file.

    A part is kept when the file has it at that place, or when it is the last part (a missing
    required key is not in the file but is the field the user must add).
    """
    kept: list[str | int] = []
    for i, part in enumerate(loc):
        here = (*prefix, *kept, part)
        missing_key = i == len(loc) - 1 and not any(c in str(part) for c in "-[(")
        if isinstance(part, int) or here in index or missing_key:
            kept.append(part)
    return tuple(kept)


def load_model(model: type[M], path: FileRef, context: dict[str, Any] | None = None) -> M:
    """Read a YAML file into `model`. Raises DataFileError listing every problem."""
    p = as_traversable(path)
    data, index = read_yaml(p)
    if data is None:
        data = {}
    try:
        return model.model_validate(data, context={"path": p, **(context or {})})
    except ValidationError as e:
        raise DataFileError(problems_from_validation(e, str(p), index)) from None


def problem_at(
    path: FileRef, data_index: dict[PathKey, int], loc: PathKey, message: str
) -> Problem:
    """A problem found after validation (cross-references), placed at `loc` in the file."""
    return Problem(str(path), line_of(data_index, loc), ".".join(str(p) for p in loc), message)
