"""`nla-tui branch SESSION --message M --text "…" [--from B] [--label L] [--explain SPEC]`:
edit message M of a saved session's branch B (default: the branch shown when it was saved)
and re-run the subject from the first changed token; the new branch is kept in the session.
`--list` prints the branch tree and `--diff B` a branch against its parent (no model).

Everything that can be checked without a model is, first: the session, the branch, the
message number, the text, the label, and that the session can be written."""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

from ..terminal_text import visible
from .common import add_model_args
from .output import say
from .session_engine import add_sampling_args, load_engine, sampling


def add_subparser(sub) -> None:
    b = sub.add_parser("branch", help="edit a message of a saved session and re-run from the first changed token",
                       description="Branch a saved session's conversation: message M replaced by new text (the "
                                   "later messages are kept and read again), captured again only from the first "
                                   "token that changed. Prints which tokens changed and, for --explain, each "
                                   "token's explanation beside the parent's. The branch is kept in the session; "
                                   "--list and --diff read the tree without loading a model.")
    add_model_args(b)
    b.add_argument("session", help="session directory (or its session.json)")
    b.add_argument("--message", type=int, help="number of the message to edit (0 = the first; --list shows them)")
    b.add_argument("--text", help="the message's new text")
    b.add_argument("--from", dest="parent", type=int,
                   help="the branch to edit (default: the one shown when the session was saved; 0 = as captured)")
    b.add_argument("--label", default="", help="a short name for the new branch")
    b.add_argument("--explain", default="none",
                   help="tokens of the new branch to explain, each beside its parent counterpart: changed (the "
                        "edited tokens), none (default), or indices/ranges like 70-75,90")
    b.add_argument("--list", action="store_true", help="list the session's branches and messages (no model)")
    b.add_argument("--diff", type=int, metavar="B", help="branch B against its parent (no model)")
    add_sampling_args(b)
    b.set_defaults(func=cmd_branch)


def cmd_branch(args: argparse.Namespace) -> int:
    from ..core.branch_tree import check_label, edited_messages
    from ..core.errors import InputError
    from .common import load_session_noting
    from .validate import parse_explain_spec

    editing = args.message is not None or args.text is not None
    if editing + bool(args.list) + (args.diff is not None) != 1:
        raise InputError('Give one of: --message M --text "…" (make a branch), --list, or --diff B.')
    session = load_session_noting(args.session)
    tree = session.branch_tree()
    if args.list:
        print_tree(tree)
        return 0
    if args.diff is not None:
        print_diff(tree, tree.get(args.diff).id)
        return 0
    if args.message is None or args.text is None:
        raise InputError('A branch needs --message M (the message to edit) and --text "…" (its new text).')
    source = tree.get(session.current_branch if args.parent is None else args.parent)
    edited_messages(source.messages, args.message, args.text)  # index, empty, unchanged: before any model
    label = check_label(args.label)
    spec = "changed" if args.explain.strip() == "changed" else parse_explain_spec(args.explain)
    if spec == "all":
        raise InputError("--explain all would explain every token of the branch: name the tokens (e.g. 70-90) "
                         "or use changed.")
    samp = sampling(args)
    check_writable(Path(args.session))
    engine = load_engine(session, args)
    engine.adopt_branches(session.branches)
    branch = engine.edit_message(args.message, args.text, source.id, label)
    tree = engine.branch_tree()
    diff = tree.diff(branch.id)
    indices = diff.changed if spec == "changed" else [] if spec == "none" else list(spec)
    bad = [i for i in indices if i >= len(branch.tokens)]
    if bad:
        raise InputError(f"--explain index {bad[0]} is out of range: the branch has {len(branch.tokens)} tokens "
                         f"(0..{len(branch.tokens) - 1}). The branch was not kept; nothing was explained.")
    ran = engine.last_recapture
    if indices:
        engine.explain(indices, samp)
        theirs = sorted({diff.aligned[i] for i in indices if i in diff.aligned} - set(source.explanations))
        if theirs:
            engine.explain_on_branch(source.id, theirs, samp)
    from .session_update import add_to_saved

    kept = add_to_saved(session, Path(args.session), lambda s: keep_branch(s, tree, branch.id), "branch",
                        "run the command again")
    say(f"branch {kept.current_branch} kept in the session ({len(kept.branches)} branches): {args.session}")
    say(f"the subject re-ran {ran['tokens'] - ran['start']} of {ran['tokens']} positions (from token "
        f"{ran['start']}; the activations before token {branch.first_changed} are the parent's, bit for bit)")
    print_diff(tree, branch.id, indices)  # the engine's tree: it holds both sides' activations (cos)
    return 0


def check_writable(path: Path) -> None:
    from ..core.errors import InputError

    directory = path.parent if path.name == "session.json" else path
    for target in (directory, directory / "session.json"):
        if not os.access(target, os.W_OK):
            raise InputError(f"The session in {directory} is read-only ({target} cannot be written), so a branch "
                             "could not be kept in it. Copy it somewhere writable (cp -r DIR NEW) and branch the "
                             "copy.")


def keep_branch(session, tree, branch_id: int) -> None:
    """Add branch `branch_id` of `tree` (and the explanations made on its parent) to
    `session`, which may be a newer save than the one it was made from: the branch takes
    the next free id there and becomes the one shown."""
    from ..core.errors import InputError

    branch = tree.get(branch_id)
    have = session.branch_tree()
    if branch.parent not in have.branches:
        raise InputError(f"The session no longer has branch {branch.parent}, the one edited.")
    parent, made = have.get(branch.parent), tree.get(branch.parent)
    for index, exps in made.explanations.items():  # the parent's side of --explain
        for e in exps:
            if e not in parent.explanations.get(index, []):
                (session.explanations.append(e) if parent.is_root else parent.explanations.setdefault(index, [])
                 .append(e))
    new = replace(branch, id=max(have.branches) + 1)
    session.branches = [b for b in session.branches] + [new]
    session.current_branch = new.id


def print_tree(tree) -> None:
    say(f"{'':2}{'branch':<8}{'from':>5} {'message':>8} {'tokens':>7} {'changed':>8} {'explained':>10}  label")
    for b in tree.ordered():
        d = tree.diff(b.id)
        mark = "*" if b.id == tree.current else " "
        say(f"{mark} {'  ' * tree.depth(b.id)}{b.id:<{8 - 2 * tree.depth(b.id)}}"
            f"{'' if b.parent is None else b.parent:>5} {'' if b.edited is None else b.edited:>8} {len(b.tokens):>7} "
            f"{'' if d is None else len(d.changed):>8} {len(b.explanations):>10}  {visible(b.title)}")
    say("(* the branch shown when the session was saved)")
    shown = tree.shown
    for k, m in enumerate(shown.messages):
        say(f"  message {k} ({m.role}): {visible(m.content[:70])}{'…' if len(m.content) > 70 else ''}")


def print_diff(tree, branch_id: int, indices: list[int] | None = None) -> None:
    b = tree.get(branch_id)
    d = tree.diff(branch_id)
    if d is None:
        say("branch 0 is the conversation as captured: it has no parent to differ from.")
        return
    parent = tree.get(b.parent)
    say(f"branch {b.id} (from {b.parent}): message {b.edited} edited{' — ' + visible(b.label) if b.label else ''}")
    say(f"  {len(b.tokens)} tokens, {len(d.changed)} changed (first at {d.first_changed}), "
        f"{len(d.removed)} of the parent's gone")
    say(f"  changed: {visible(''.join('[' + b.tokens[i].text + ']' for i in d.changed))!r}")
    shown = sorted(set(indices or []) | set(b.explanations))
    if not shown:
        return
    say(f"\n{'idx':>4} {'token':<14}{'parent':>7} {'cos':>6} {'fve':>6}  explanation here | fve, in the parent")
    for i in shown:
        j = d.aligned.get(i)
        mine, theirs = b.best(i), parent.best(j) if j is not None else None
        fve = lambda e: f"{e.score.fidelity:6.2f}" if e is not None and e.score else f"{'':6}"  # noqa: E731
        cos = f"{d.cos[i]:6.3f}" if i in d.cos else f"{'':6}"
        say(f"{i:>4} {visible(repr(b.tokens[i].text))[:13]:<14}{'' if j is None else j:>7} {cos} {fve(mine)}  "
            f"{visible(mine.text[:60]) if mine else '(not explained)'}")
        if theirs is not None:
            say(f"{'':>35}| {fve(theirs)}  {visible(theirs.text[:60])}")
