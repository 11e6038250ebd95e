"""Running `nla-tui` commands in the test process (shared by the CLI and corpus tests)."""

from __future__ import annotations


def cli_main(capsys, *args) -> tuple[int, str, str]:
    """`cli.main` in-process: exit code, stdout, stderr. argparse's own refusals exit
    through SystemExit; any other exception escapes with its traceback and fails the
    test, so "no traceback" holds whenever this returns."""
    from nla_tui import cli

    try:
        code = cli.main(list(args))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err
