"""``mbias report DIR [--compare DIR2] [--out FILE]``: re-render from JSON alone (no torch needed)."""

from __future__ import annotations

from mbias.reports import render_audit, render_compare


def run_report_command(args) -> int:
    if args.compare:
        path = render_compare(args.dir, args.compare, args.out)
    else:
        path = render_audit(args.dir, args.out)
    print(f"wrote {path}")
    return 0
