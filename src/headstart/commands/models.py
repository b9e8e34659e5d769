"""`headstart models ...`: the local model store (register, promote, rollback, diff, rm, list, show)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from headstart.commands import console, fmt, print_json

ACCEPT_HELP = (
    "point the alias at a generative fine-tune even though its behaviour check is flagged (it lost a "
    "refusal: behaviour.json); the store's event log records it"
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="versioned model store: register, promote, rollback, diff, rm")
    verbs = p.add_subparsers(dest="models_verb", required=True, metavar="ACTION")

    def add(name: str, help: str, func: Any, *positionals: str | tuple[str, str]) -> argparse.ArgumentParser:
        """An action with the flags all share, its positional arguments (NAME or (NAME, help)) and command."""
        q = verbs.add_parser(name, help=help)
        q.add_argument(
            "--store", type=Path, help="store folder (default: $HEADSTART_MODELS or ./headstart-models)"
        )
        q.add_argument("--json", action="store_true", help="machine-readable output")
        for arg in positionals:
            arg_name, arg_help = (arg, None) if isinstance(arg, str) else arg
            q.add_argument(arg_name, help=arg_help)
        q.set_defaults(func=func)
        return q

    add("list", "every stored model, its versions and aliases", cmd_list)
    add("show", "model card and files of NAME, NAME:v2 or NAME@alias", cmd_show, "ref")

    q = add("register", "store a run folder as the next version of a model", cmd_register)
    q.add_argument("run", type=Path)
    q.add_argument("--name", help="model name (default: the run folder's name)")
    q.add_argument("--alias", help="also point this alias at the new version")
    q.add_argument("--mlflow", metavar="URI", help="also log the version to this MLflow tracking URI")
    q.add_argument("--accept-behaviour-change", action="store_true", help=ACCEPT_HELP)

    promote_help = "point an alias (default production) at a version"
    q = add("promote", promote_help, cmd_promote, "name", ("version", "2 or v2"))
    q.add_argument("--alias", default="production")
    q.add_argument(
        "--force",
        action="store_true",
        help="promote even when the version is worse than the alias's holder on a slice (recorded)",
    )
    q.add_argument("--accept-behaviour-change", action="store_true", help=ACCEPT_HELP)

    q = add("rollback", "move an alias back to the version it pointed at before", cmd_rollback, "name")
    q.add_argument("--alias", default="production")

    diff_help = "what differs between two versions: metrics, recipe, base, files"
    add("diff", diff_help, cmd_diff, "name", ("a", "version, e.g. v1"), ("b", "version, e.g. v2"))

    rm_help = "remove a version (refused while an alias points to it, unless --force)"
    q = add("rm", rm_help, cmd_rm, "name", "version")
    q.add_argument("--force", action="store_true", help="remove it and the aliases pointing to it")


def _store(args: argparse.Namespace) -> Any:
    from headstart.store import ModelStore

    return ModelStore(args.store)


def cmd_list(args: argparse.Namespace) -> int:
    store = _store(args)
    models = store.list_models()
    if args.json:
        print_json({"store": str(store.root), "models": models})
        return 0
    from rich.markup import escape
    from rich.table import Table

    if not models:
        console().print(f"no models in {store.root}", markup=False)
        return 0
    t = Table(title=escape(f"Models in {store.root}"))
    for col in ("model", "version", "aliases", "base", "kind", "test accuracy", "created"):
        # Names are what the user types next: in a narrow terminal they wrap, they are never cut to "…".
        t.add_column(col, overflow="fold" if col in ("model", "aliases", "base") else "ellipsis")
    for m in models:
        for v in m["versions"]:
            t.add_row(
                escape(m["name"]),
                f"v{v['version']}",
                escape(" ".join(f"@{a}" for a in v["aliases"])),
                escape(fmt(v["base"])),
                fmt(v["kind"]),
                fmt(v["test_accuracy"]),
                fmt(v["created"]),
            )
    console().print(t)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    info = _store(args).show(args.ref)
    if args.json:
        print_json(info)
        return 0
    from rich.markup import escape

    con = console()
    card = info["card"]
    base = card["base"]
    aliases = " ".join(f"@{a}" for a in info["aliases"]) or "no aliases"
    con.print(f"[bold]{info['name']}:v{info['version']}[/bold] ({aliases}) {escape(info['path'])}")
    con.print(
        f"base: {base['name']} {base['version'] or ''} from {base['source']}, license {base['license']}, "
        f"sha256 {str(base['sha256'])[:16]}...",
        markup=False,
    )
    counts = ", ".join(f"{c} {n}" for c, n in card["data"]["class_counts"].items())
    con.print(
        f"data: {card['data']['root']} ({counts}); {len(card['data']['skipped'])} skipped", markup=False
    )
    con.print(f"kind: {card['kind']}, seed {card['seed']}, recipe {card['recipe']}", markup=False)
    con.print("metrics: " + ", ".join(f"{k} {fmt(v)}" for k, v in card["metrics"].items()), markup=False)
    if card.get("temperature"):
        con.print(f"temperature: {card['temperature']:.3f}")
    for f, rec in info["manifest"]["files"].items():
        con.print(f"  {f:<20} {rec['bytes']:>10,} B  {rec['sha256'][:16]}", markup=False)
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    store = _store(args)
    from headstart.store import default_name

    name = args.name or default_name(args.run)
    n = store.register(
        args.run,
        name,
        alias=args.alias,
        mlflow_uri=args.mlflow,
        accept_behaviour_change=args.accept_behaviour_change,
    )
    out = {"name": name, "version": n, "ref": f"{name}:v{n}", "path": str(store.version_dir(name, n))}
    if args.alias:
        out["alias"] = args.alias
    if args.json:
        print_json(out)
    else:
        extra = f" (@{args.alias})" if args.alias else ""
        console().print(f"registered {out['ref']}{extra} in {out['path']}", markup=False)
    return 0


def _print_alias(args: argparse.Namespace, version: int, moved: str) -> int:
    """What promote and rollback print: the version the alias points at now."""
    if args.json:
        print_json({"name": args.name, "alias": args.alias, "version": version})
    else:
        console().print(f"{args.name}@{args.alias} {moved} v{version}", markup=False)
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    done = _store(args).promote_checked(
        args.name,
        args.version,
        args.alias,
        force=args.force,
        accept_behaviour_change=args.accept_behaviour_change,
    )
    cmp = done["slices"]
    if args.json:
        print_json({"name": args.name, "alias": args.alias, "version": done["version"], "slices": cmp})
        return 0
    _print_alias(args, done["version"], "->")
    con = console()
    if not cmp["compared"]:
        con.print(f"slices not compared: {cmp['reason']}", markup=False)
        return 0
    for name, r in cmp["by_slice"].items():
        how = "paired" if r["paired"] else "unpaired"
        flag = "  REGRESSED (promoted with --force)" if r["regressed"] else ""
        con.print(
            f"  slice {name}: accuracy {r['diff']:+.3f} [{r['ci'][0]:+.2f}, {r['ci'][1]:+.2f}] vs "
            f"{cmp['holder']} ({how}, p(Holm) {r['p_holm']:.3g}){flag}",
            markup=False,
        )
    if cmp["not_compared"]:
        con.print(f"  slices on one side only, not compared: {', '.join(cmp['not_compared'])}", markup=False)
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    return _print_alias(args, _store(args).rollback(args.name, args.alias), "rolled back to")


def cmd_diff(args: argparse.Namespace) -> int:
    d = _store(args).diff(args.name, args.a, args.b)
    if args.json:
        print_json(d)
        return 0
    from rich.markup import escape
    from rich.table import Table

    con = console()
    for section in ("metrics", "recipe", "base"):
        if not d[section]:
            con.print(f"{section}: same")
            continue
        t = Table(title=section)
        for col in ("", d["a"], d["b"]):
            t.add_column(escape(col), overflow="fold")
        for k, (va, vb) in d[section].items():
            t.add_row(escape(k), escape(fmt(va)), escape(fmt(vb)))
        con.print(t)
    files = d["files"]
    con.print(
        f"files changed: {', '.join(files['changed']) or 'none'}; only in {d['a']}: "
        f"{', '.join(files['only_a']) or 'none'}; only in {d['b']}: {', '.join(files['only_b']) or 'none'}",
        markup=False,
    )
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    _store(args).remove(args.name, args.version, force=args.force)
    if args.json:
        print_json({"name": args.name, "removed": args.version})
    else:
        console().print(f"removed {args.name}:{args.version}", markup=False)
    return 0
