"""The sections of a generate run (headstart.shapes.generate): scores before and after with their 95%
intervals and verdicts (a probe's: the frozen base's alone), example generations, and the behaviour check's
table (a probe has none: nothing was tuned)."""

from __future__ import annotations

from typing import Any

from headstart.report.html import Html, join, not_computed, note, num, table, tag
from headstart.report.loader import RunFiles


def _scores(files: RunFiles) -> tuple[dict[str, Any], str]:
    """The scores to show and where they come from: evaluation.json, else metrics.json's test/val split."""
    ev = files.evaluation or {}
    if ev.get("task") == "generate" and isinstance(ev.get("metrics"), dict):
        return ev["metrics"], f"{ev.get('evaluated', 'evaluated pairs')} (evaluation.json)"
    m = files.metrics or {}
    for split in ("test", "val"):
        if isinstance(m.get(split), dict) and m[split].get("n"):
            return m[split], f"{split} split, {m[split]['n']} pairs (metrics.json)"
    return {}, ""


def section(files: RunFiles) -> tuple[Html, bool]:
    from headstart.shapes.generate_save import score_table

    m, where = _scores(files)
    sides = [k for k in ("base", "before", "after") if m.get(k)]
    if not sides:
        return not_computed("no scores (metrics.json)", f"headstart evaluate {files.path}"), False
    title, columns, rows = score_table(m, where)
    what = (
        "The frozen base model (a probe: nothing trained) on the held-out pairs"
        if sides == ["base"]
        else "The base model (before) and the tuned one (after) on the same held-out pairs"
    )
    parts = [
        tag(
            "p",
            f"{what}: loss and perplexity of the response tokens only, exact match and ROUGE-L F1 of "
            "greedy generations. Intervals are a bootstrap over pairs; a difference whose interval holds 0 "
            "is a tie.",
        ),
        table(
            columns,
            rows,
            numeric=range(1, len(columns) - 1 if "verdict" in columns else len(columns)),
            caption=title,
        ),
    ]
    ex = m.get("examples") or []
    shown = [k for k in ("base", "before", "after") if ex and k in ex[0]]
    if shown:
        ex_rows = [
            [
                e["prompt"],
                e["reference"],
                *(e[k] for k in shown),
                " → ".join(num(e[f"rouge_l_{k}"], 2) for k in shown),
            ]
            for e in ex
        ]
        names = ["tuned" if k == "after" else "base" for k in shown]
        parts.append(table(["prompt", "reference", *names, "ROUGE-L"], ex_rows, caption="Examples"))
    return join(parts), True


def behaviour_section(files: RunFiles) -> tuple[Html, bool]:
    from headstart.runs import BEHAVIOUR_FILE, read_json
    from headstart.shapes.generate_save import NO_BEHAVIOUR_CHECK

    if files.info.kind == "probe":
        return tag("p", NO_BEHAVIOUR_CHECK[0].upper() + NO_BEHAVIOUR_CHECK[1:] + "."), True
    check = read_json(files.path / BEHAVIOUR_FILE)
    if not check.get("rows"):
        return not_computed(
            f"no behaviour check ({BEHAVIOUR_FILE})", "headstart fit DATA --task generate"
        ), False
    c = check["counts"]
    parts = [
        tag(
            "p",
            f"Prompt set v{check['version']}: base and tuned model answer {c['prompts']} fixed prompts "
            f"greedily. Harmful requests refused: base {c['base_refused']}/{c['harmful']}, tuned "
            f"{c['tuned_refused']}/{c['harmful']}; knowledge answers right: base {c['base_correct']}/"
            f"{c['knowledge']}, tuned {c['tuned_correct']}/{c['knowledge']}; {c['changed']} answers changed.",
        )
    ]
    if check.get("flagged"):
        parts.append(
            note(
                f"FLAGGED: refusals lost on {', '.join(check['refusals_lost'])}. The model store will not "
                "point an alias at this run without --accept-behaviour-change.",
                "warn",
            )
        )
    if check.get("knowledge_lost"):
        parts.append(note(f"knowledge answers lost: {', '.join(check['knowledge_lost'])}", "warn"))
    parts += [note(w, "warn") for w in check.get("warnings", [])]
    rows, classes = [], []
    for r in check["rows"]:
        what = (
            "refusal lost"
            if r["base_refused"] and not r["tuned_refused"]
            else ("changed" if r["changed"] else "same")
        )
        if r.get("base_correct") and not r.get("tuned_correct"):
            what = "knowledge lost"
        rows.append([r["kind"], r["id"], r["prompt"], r["base"], r["tuned"], what])
        classes.append("bad" if what in ("refusal lost", "knowledge lost") else None)
    parts.append(table(["kind", "id", "prompt", "base", "tuned", "verdict"], rows, row_class=classes))
    return join(parts), True
