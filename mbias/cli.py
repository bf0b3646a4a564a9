"""The ``mbias`` command. Thin: parse, then import the heavy module the subcommand needs (torch loads late)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from mbias import __version__
from mbias.errors import MbiasError

EPILOG = """model references: a hub id (org/name), a local folder written by save_pretrained, or zoo:NAME
data references: a .jsonl file, a folder with metadata.jsonl, a saved HF dataset folder, synth:NAME/SPLIT,
  or a hub dataset hf:REPO:SPLIT or hf:REPO:CONFIG:SPLIT (e.g. hf:lmms-lab/POPE:test; needs mbias[datasets]);
  --columns FIELD=COLUMN,... maps columns named otherwise (docs/datasets.md: VQAv2, POPE, MMStar, A-OKVQA, ScienceQA)"""


class _ListProbes(argparse.Action):
    """``--list-probes``: print the registered probes with their definitions and exit (like ``--version``)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from mbias.probes import DEFAULT_PROBES, PROBES

        for name in PROBES.names():
            default = "" if name in DEFAULT_PROBES else " (not run by default)"
            print(f"{name}{default}: {PROBES.get(name).definition}")
        parser.exit()


def _add_model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    from mbias.config import add_dataclass_args
    from mbias.models.config import LoadOptions

    p.add_argument("--model", required=required, help="hub id, local model folder, or zoo:NAME"
                   + ("" if required else " (or model: in the --config file)"))
    add_dataclass_args(p.add_argument_group("loading and placement (docs/scaling.md)"), LoadOptions)


def _add_common_run_args(p: argparse.ArgumentParser, data_required: bool = True) -> None:
    p.add_argument("--data", required=data_required, help="dataset reference (see below)"
                   + ("" if data_required else "; or data: in the --config file"))
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--config", help="YAML file with config fields (flags given here win)")
    p.add_argument("--on-error", choices=["stop", "skip"], default="stop",
                   help="bad records: stop before writing anything (default) or skip them with a count in the log")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_training_args(p: argparse.ArgumentParser) -> None:
    """Every field of ``FinetuneConfig``: mbias's own and all of transformers' ``TrainingArguments``, as
    ``HfArgumentParser`` writes them. Defaults are left out of the parsed flags, so a --config file fills what the
    command line does not say (flags win)."""
    from transformers import HfArgumentParser

    from mbias.finetune.config import FinetuneConfig

    hf = HfArgumentParser(FinetuneConfig, add_help=False)
    group = p.add_argument_group("training (mbias's settings, then every transformers TrainingArguments field)")
    for action in hf._actions:
        if action.dest in ("output_dir",):  # --out names the output
            continue
        action.default = argparse.SUPPRESS
        if action.dest in ("recipe_config", "columns"):
            action.type = str  # YAML / FIELD=COLUMN text, parsed by the config
        group._add_action(action)  # registers it with the parser too, and lists it once in --help


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The command line. The fine-tuning flags (transformers' TrainingArguments) are added only when the command
    is ``finetune``, so ``mbias --help`` and the other commands do not import transformers."""
    from mbias.config import add_dataclass_args
    from mbias.models.config import ScoringConfig

    parser = argparse.ArgumentParser(
        prog="mbias", description="Measure and reduce language-vs-vision modality bias in multimodal LLMs.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"mbias {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("audit", help="measure a model's modality reliance on a dataset and write a report",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_model_args(p)
    _add_common_run_args(p)
    p.add_argument("--seed", type=int, help="run seed (default: 0, or the config file's)")
    p.add_argument("--columns", help="dataset columns under other names: FIELD=COLUMN,... with FIELD among id, "
                                     "image, question, answer, choices, category, image_key")
    p.add_argument("--probes", help="comma-separated probe names (default: the standard set; see --list-probes)")
    p.add_argument("--list-probes", action=_ListProbes, help="list the probes with their definitions and exit")
    p.add_argument("--max-samples", type=int, help="audit at most N samples")
    p.add_argument("--decode", metavar="NAME[:k=v,...]",
                   help="audit the model served through a decode-time fix: contrastive[:alpha=1] (image-free "
                        "contrast) or vcd[:alpha=1,beta=0.1,noise_step=500] (noised image); see docs/recipes.md")
    p.add_argument("--overwrite", action="store_true", help="start over in a folder that holds another config")
    p.add_argument("--no-report", action="store_true", help="write summary.json only, no HTML/Markdown")
    add_dataclass_args(p.add_argument_group("masking and scoring"), ScoringConfig)
    p.set_defaults(handler=_run_audit)

    p = sub.add_parser("report", help="render report.html/report.md/model_card.md from an audit folder")
    p.add_argument("dir", help="audit output folder (with summary.json)")
    p.add_argument("--compare", help="a second audit folder: render a side-by-side with differences")
    p.add_argument("--out", help="output file or folder (default: inside DIR)")
    p.set_defaults(handler=_run_report)

    p = sub.add_parser("finetune", help="fine-tune (LoRA or every parameter) with a debiasing or balancing recipe",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    _add_model_args(p, required=False)
    _add_common_run_args(p, data_required=False)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    if _command(argv) == "finetune":
        _add_training_args(p)
    p.set_defaults(handler=_run_finetune)

    p = sub.add_parser("synth", help="export a built-in synthetic dataset as data.jsonl + PNG files")
    p.add_argument("name", help="synthetic dataset, e.g. shapes-p90/test-cp (synth: prefix optional)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--limit", type=int, help="export only the first N examples")
    p.set_defaults(handler=_run_synth)

    p = sub.add_parser("zoo", help="tiny reference models trained on the synthetic benchmark")
    zsub = p.add_subparsers(dest="zoo_command", metavar="ACTION")
    z = zsub.add_parser("list", help="names, where each comes from, and its measured behaviour")
    z.set_defaults(handler=_run_zoo_list)
    z = zsub.add_parser("build", help="train one zoo model here (a pinned one with --rebuild, compared with the "
                                      "shipped build)")
    z.add_argument("name", help="e.g. shapes-p90, or shapes-p90-seed12 for another build of the recipe")
    z.add_argument("--rebuild", "--force", dest="rebuild", action="store_true",
                   help="train from scratch even if cached or shipped, and compare with the shipped build")
    z.add_argument("--no-progress", action="store_true", help="no progress bar")
    z.set_defaults(handler=_run_zoo_build)
    p.set_defaults(handler=lambda a: _usage(p))

    p = sub.add_parser("demo", help="the whole mission on embedded defaults: audit, fine-tune, compare (CPU)")
    p.add_argument("--out", default="mbias-demo", help="output folder (default: ./mbias-demo)")
    p.add_argument("--quick", action="store_true", help="fewer samples, for a smoke test")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=_run_demo)

    p = sub.add_parser("env", help="versions and devices, for bug reports")
    p.set_defaults(handler=_run_env)
    return parser


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _run_audit(args) -> int:
    from mbias.diagnose.cli import run_audit_command

    return run_audit_command(args)


def _run_report(args) -> int:
    from mbias.reports.cli import run_report_command

    return run_report_command(args)


def _run_finetune(args) -> int:
    from mbias.finetune.cli import run_finetune_command

    return run_finetune_command(args)


def _run_synth(args) -> int:
    from mbias.synth import export_synth

    out = export_synth(args.name, args.out, limit=args.limit)
    print(f"wrote {out}")
    return 0


def _run_zoo_list(args) -> int:
    from mbias.zoo import zoo_status
    from mbias.zoo.pinned import behaviour_line

    for r in zoo_status():
        source = f"pinned build {r['build']}" if r["status"] == "pinned" else r["status"]
        print(f"{r['name']:<14} {source:<30} {r['description']}")
        if r.get("behaviour"):
            print(f"{'':<14} {behaviour_line(r['behaviour'])}")
    print("pinned: shipped with mbias, the same weights on every machine; other names (NAME-seedN) train here on "
          "first use. Behaviour on 500 examples of synth:shapes-p90/test-cp and test-balanced, 95% intervals.")
    return 0


def _run_zoo_build(args) -> int:
    from mbias.zoo import rebuild_report

    if not args.rebuild:
        from mbias.zoo.pinned import pinned_builds

        if args.name in pinned_builds():
            print(f"zoo:{args.name} is pinned: it ships with mbias, nothing to build. `mbias zoo build {args.name} "
                  "--rebuild` trains it again here and compares the result with the shipped build.")
            return 0
    path, lines = rebuild_report(args.name, force=args.rebuild, progress=not args.no_progress)
    print(f"built zoo:{args.name} at {path}")
    for line in lines:
        print(line)
    return 0


def _run_demo(args) -> int:
    from mbias.demo import run_demo

    return run_demo(args, say=lambda line: print(line, flush=True))


def _run_env(args) -> int:
    from mbias.env import environment_report

    print(environment_report())
    return 0


def _command(argv: list[str] | None) -> str | None:
    """The subcommand named on the command line (the first argument that is not an option)."""
    args = sys.argv[1:] if argv is None else argv
    return next((a for a in args if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("mbias").setLevel(min(logging.INFO, level))
    try:
        return int(args.handler(args) or 0)
    except MbiasError as exc:
        print(f"mbias: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)  # a fine-tune stopped by SIGTERM ends 143, as a scheduler expects
    except KeyboardInterrupt:
        print("mbias: interrupted", file=sys.stderr)
        return 130


def _in_process_group() -> bool:
    dist = sys.modules.get("torch.distributed")
    return dist is not None and dist.is_available() and dist.is_initialized()


def main_entry() -> None:
    code = main()
    if _in_process_group():
        # Under accelerate launch / torchrun, end without interpreter finalization. Gloo's worker threads can still
        # hold work whose tensors reference Python objects, and tearing those down during finalization aborted a
        # finished worker (SIGABRT, "terminate called without an active exception"; pytorch/pytorch#179291) in
        # about one of 50 two-process runs here. destroy_process_group() did not prevent it: the DDP-wrapped model
        # still holds the group until finalization. Every output file is closed and every collective over by now.
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    sys.exit(code)
