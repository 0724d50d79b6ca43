"""The step graph as a Mermaid state diagram and a table, generated into docs/swap.md.

`python -m edge.swap.diagram --write docs/swap.md` rewrites the generated block; a test checks
that the committed block equals what the graph generates.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge.swap.steps import StepGraph, load_step_graph

BEGIN = (
    "<!-- BEGIN GENERATED: swap step graph (python -m edge.swap.diagram --write docs/swap.md) -->"
)
END = "<!-- END GENERATED -->"


def mermaid(graph: StepGraph) -> str:
    steps = graph.steps
    ids = [s.id for s in steps]
    dependents: dict[str, list[str]] = {i: [] for i in ids}
    for s in steps:
        for d in s.after:
            dependents[d].append(s.id)
    _, critical = graph.critical_path()
    lines = ["stateDiagram-v2", "    direction LR"]
    for s in steps:
        lines.append(f"    {s.id} : {s.unit} / {s.plc_step} ({s.duration_s:g} s)")
    roots = [s.id for s in steps if not s.after]
    leaves = [i for i in ids if not dependents[i]]
    if len(roots) > 1:
        lines.append("    state armed <<fork>>")
        lines.append("    [*] --> armed")
        lines += [f"    armed --> {r}" for r in roots]
    else:
        lines += [f"    [*] --> {r}" for r in roots]
    for s in steps:
        if len(dependents[s.id]) > 1:
            lines.append(f"    state fork_{s.id} <<fork>>")
            lines.append(f"    {s.id} --> fork_{s.id}")
    for s in steps:
        srcs = [f"fork_{d}" if len(dependents[d]) > 1 else d for d in s.after]
        if len(srcs) > 1:
            lines.append(f"    state join_{s.id} <<join>>")
            lines += [f"    {src} --> join_{s.id}" for src in srcs]
            lines.append(f"    join_{s.id} --> {s.id}")
        else:
            lines += [f"    {src} --> {s.id}" for src in srcs]
    if len(leaves) > 1:
        lines.append("    state completed <<join>>")
        lines += [f"    {leaf} --> completed" for leaf in leaves]
        lines.append("    completed --> [*]")
    else:
        lines += [f"    {leaf} --> [*]" for leaf in leaves]
    lines.append("    classDef critical font-weight:bold,stroke-width:3px")
    lines.append("    classDef rack fill:#eef")
    rack = [s.id for s in steps if s.unit == "rack"]
    lines.append(f"    class {','.join(i for i in critical)} critical")
    lines.append(f"    class {','.join(rack)} rack")
    return "\n".join(lines)


def table(graph: StepGraph) -> str:
    rows = [
        "| step | unit | PLC step | after | s | timeout s | interlocks | requires | moves |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in graph.steps:
        moves = ", ".join(f"{m.source} -> {m.to}" for m in s.moves)
        rows.append(
            f"| {s.id} | {s.unit} | {s.plc_step} | {', '.join(s.after) or 'armed'} "
            f"| {s.duration_s:g} | {s.timeout_s:g} | {', '.join(s.interlocks)} "
            f"| {', '.join(s.requires)} | {moves} |"
        )
    return "\n".join(rows)


def generated_block(graph: StepGraph) -> str:
    total, path = graph.critical_path()
    return "\n".join(
        [
            BEGIN,
            "```mermaid",
            mermaid(graph),
            "```",
            "",
            f"In series the steps take {graph.series_s():g} s; as a graph the critical path is "
            f"{total:g} s: {' -> '.join(path)}.",
            "",
            table(graph),
            END,
        ]
    )


def render_into(doc: str, graph: StepGraph) -> str:
    if BEGIN not in doc or END not in doc:
        raise ValueError("document has no generated block markers")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + generated_block(graph) + tail


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge.swap.diagram")
    p.add_argument(
        "--steps",
        default=None,
        help="step graph file (default: the shipped edge/swap/swap-steps.yaml)",
    )
    p.add_argument("--write", metavar="DOC", help="rewrite the generated block of DOC")
    args = p.parse_args(argv)
    graph = load_step_graph(args.steps) if args.steps else load_step_graph()
    if args.write:
        path = Path(args.write)
        path.write_text(render_into(path.read_text(encoding="utf-8"), graph), encoding="utf-8")
    else:
        sys.stdout.write(mermaid(graph) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
