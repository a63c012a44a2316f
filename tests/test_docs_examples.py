"""The docs' examples are true: docs/schema.md's complete schema loads, docs/models.md's table of
training defaults equals TrainConfig's."""

from __future__ import annotations

import re
from pathlib import Path

from eventrec.schema import load_schema

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _section(page: str, heading: str) -> str:
    text = (DOCS / page).read_text()
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start:] if end < 0 else text[start:end]


def test_the_complete_schema_example_loads(tmp_path):
    block = re.search(r"```yaml\n(.*?)```", _section("schema.md", "## A complete example"), re.S).group(1)
    path = tmp_path / "shop.yaml"
    path.write_text(block)
    schema = load_schema(path)
    search = next(s for s in schema.streams if s.name == "search")
    assert search.source is not None and search.source.type_column is None and search.source.timestamp_unit == "ms"
    assert schema.impressions.request_column == "request_id" and schema.impressions.labels == ["click", "purchase"]


def test_the_training_defaults_table_is_trainconfigs():
    from eventrec.training.trainer import TrainConfig

    rows = re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", _section("models.md", "### Defaults (`TrainConfig`)"), re.M)
    documented = dict(rows)
    fields = TrainConfig.model_fields
    assert set(documented) == set(fields), set(documented) ^ set(fields)
    for name, shown in documented.items():
        default = TrainConfig().__getattribute__(name)
        expected = "[{kind: bce}]" if name == "objectives" else repr(default).replace("'", "") if default is not None else "null"
        assert shown == expected, (name, shown, expected)
