"""The config reference (docs/config.md), generated from the config dataclasses.

Each section lists a dataclass's fields with type, default and the description from its
docstring's ``Attributes:`` block, so the reference cannot drift from the code (a test
regenerates it and compares). ``python -m acl_dist.configdoc > docs/config.md``.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing

from .config import (ClusterConfig, LocalizeConfig, LossConfig, ModelConfig, RunConfig,
                     TrainConfig)

SECTIONS = [("top level", RunConfig), ("model", ModelConfig), ("loss", LossConfig),
            ("train", TrainConfig), ("cluster", ClusterConfig), ("localize", LocalizeConfig)]


def _descriptions(cls: type) -> dict[str, str]:
    """Field -> description, from the docstring's Attributes block (``name: text`` or
    ``a, b: text`` entries, continuation lines indented further)."""
    doc = inspect.getdoc(cls) or ""
    if "Attributes:" not in doc:
        return {}
    block = doc.split("Attributes:", 1)[1]
    out: dict[str, str] = {}
    current: list[str] = []
    text: list[str] = []
    for line in block.splitlines():
        m = re.match(r"^    ([a-z_][a-z0-9_, ]*):\s*(.*)$", line)
        if m:
            for name in current:
                out[name] = " ".join(text).strip()
            current = [n.strip() for n in m.group(1).split(",")]
            text = [m.group(2)]
        elif line.startswith("        ") and current:
            text.append(line.strip())
    for name in current:
        out[name] = " ".join(text).strip()
    return out


def _type_name(t: typing.Any) -> str:
    return re.sub(r"typing\.|acl_dist\.config\.", "", str(t)).replace("<class '", "").replace(
        "'>", "")


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
        if isinstance(value, float) and value == 2 / 3:
            return "0.6667 (2/3)"
        return repr(value).replace("'", "")
    return "(section)"


def render() -> str:
    lines = ["# Config reference", "",
             "Generated from `acl_dist/config.py` by `python -m acl_dist.configdoc`; do not "
             "edit by hand.", "",
             "Set values in a YAML file (`--config FILE`, or a preset name: "
             "`demo`, `tiny`, `thumos14`, `anet12`, `anet13`, `paper`) or with dotted "
             "overrides (`--set train.lr=3e-4`). Unknown keys and wrong types are errors.", ""]
    for title, cls in SECTIONS:
        hints = typing.get_type_hints(cls)
        desc = _descriptions(cls)
        lines += [f"## {title}" + ("" if title == "top level" else f" (`{title}.*`)"), "",
                  inspect.getdoc(cls).split("\n\n")[0].split("Attributes:")[0].strip(), "",
                  "| key | type | default | meaning |", "|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                continue
            key = f.name if title == "top level" else f"{title}.{f.name}"
            meaning = desc.get(f.name, "").replace("|", "\\|")
            lines.append(f"| `{key}` | `{_type_name(hints[f.name])}` | `{_default(f)}` | "
                         f"{meaning} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(), end="")
