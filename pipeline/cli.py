"""The `tokshard` command line: train-tokenizer, encode, run (both, the main job), inspect, mix, export and
eval-tokenizer.

Other rooms add their own subcommands (`serve` from service/, `train` and `sample` from trainer/) through the
`tokshard.commands` entry-point group, so the core never imports them.
Each command prints a short human summary, or with `--json` one machine-readable JSON object on stdout.
Exit codes: 0 done, 1 the run finished incomplete or verification found problems, 2 bad usage or input.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from tokshard.pipeline import balance, eval_report, evaluate, export, jobs, mix, sources, storage
from tokshard.pipeline.manifest import MANIFEST, Manifest, unlisted_shards
from tokshard.pipeline.tokenizer import (
    DEFAULT_PATTERN,
    DEFAULT_VOCAB_SIZE,
    METADATA_JSON,
    TOKEN_BYTES_NPY,
    TOKENIZER_JSON,
    Tokenizer,
)

TRAIN_TMP_PREFIX = ".tmp-train-"
EXIT_INCOMPLETE = 1
EXIT_USAGE = 2


def _add_source(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--source", required=required, default=None,
                   help="parquet file, directory, glob, hf://datasets/... or fsspec URL"
                   + ("" if required else " (default: the bundled sample)"))
    p.add_argument("--text-column", default=sources.DEFAULT_TEXT_COLUMN, help="column holding the document text")
    p.add_argument("--id-column", default=sources.DEFAULT_ID_COLUMN,
                   help="column holding the document id (FILE#ROW when the source has none)")


def _add_ray(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None, help="join a Ray cluster: auto, ray://host:10001 or host:port "
                   "(default: start a local Ray instance for this run)")
    p.add_argument("--workers", type=int, default=None, help="parallel tasks (default: all CPUs)")
    p.add_argument("--in-process", action=argparse.BooleanOptionalAction, default=None,
                   help="run without Ray, in this process (default: when there is no cluster to join and the "
                   f"source holds at most {jobs.LOCAL_MAX_BYTES >> 20} MiB of text; same output either way)")
    p.add_argument("--json", action="store_true", help="print a JSON summary")


def _add_training(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE, help="ids, special tokens included")
    p.add_argument("--sample-bytes", type=int, default=jobs.DEFAULT_SAMPLE_BYTES,
                   help="UTF-8 bytes of documents sampled from SRC to train on")
    p.add_argument("--pattern", default=DEFAULT_PATTERN, help="split pattern: gpt2, cl100k (gpt4), cl100k-d2, "
                   "o200k (gpt4o), or a regex")
    p.add_argument("--seed", type=int, default=0, help="which documents the sample takes")
    p.add_argument("--superbpe-transition", type=int, default=None, metavar="T",
                   help="SuperBPE: ordinary merges up to a T-token vocabulary, then merges across the spaces between "
                   "words up to --vocab-size (e.g. 28672 of 32768; preset patterns only)")


def _add_encoding(p: argparse.ArgumentParser) -> None:
    p.add_argument("--val-fraction", type=float, default=jobs.DEFAULT_VAL_FRACTION,
                   help="share of documents (chosen by a hash of their id) in the validation split")
    p.add_argument("--slice-mb", type=int, default=sources.DEFAULT_SLICE_BYTES >> 20,
                   help="uncompressed text per encode task / shard, in MiB")
    p.add_argument("--limit-docs", type=int, default=None, help="encode only the first N documents (trial runs)")
    p.add_argument("--limit-files", type=int, default=None, help="encode only the first N files (trial runs)")
    _add_progress(p)


def _add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: when stderr is a terminal; plain log lines otherwise)")


_NO_DEFAULT = (None, False, argparse.SUPPRESS)  # compared by identity: 0 is a default worth showing


class _ShowDefaults(argparse.HelpFormatter):
    """Every option's help ends with its default, taken from the value argparse holds: the constant the code uses,
    so `--help` cannot drift from it. Options without a default (None, or a flag that is off) show none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or not action.option_strings or any(action.default is v for v in _NO_DEFAULT):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


class _Parser(argparse.ArgumentParser):
    """tokshard's parsers, the subcommands other rooms register included, show their defaults."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _ShowDefaults)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tokshard", description="Train a BPE tokenizer and tokenize a corpus into Arrow token "
                     "shards with Ray.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train-tokenizer", help="train a byte-level BPE tokenizer on a sample of SRC")
    p.set_defaults(func=_json_only_on_stdout(cmd_train_tokenizer))
    _add_source(p, required=True)
    p.add_argument("--out", required=True, help="tokenizer directory to write")
    p.add_argument("--balance-by", default=None, metavar="COLUMN", help="draw each value of COLUMN (e.g. language) "
                   "at a temperature-sampled share of the sample; --source may then join several sources by commas")
    p.add_argument("--balance-alpha", type=float, default=None, metavar="A",
                   help="share of a group ~ its bytes^A: 1 = the corpus' proportions, 0 = equal shares "
                   f"(default {balance.DEFAULT_ALPHA})")
    p.add_argument("--balance-weights", default=None, metavar="G=W,...", help="multiply groups' shares "
                   "(0 drops a group)")
    _add_training(p)
    _add_progress(p)  # of SuperBPE's stage 2 (stage 1 trains in one rustbpe call)
    _add_ray(p)

    p = sub.add_parser("encode", help="encode SRC into token shards")
    p.set_defaults(func=_json_only_on_stdout(cmd_encode))
    _add_source(p, required=True)
    p.add_argument("--tokenizer", required=True, help="tokenizer directory")
    p.add_argument("--out", required=True, help="output directory")
    _add_encoding(p)
    _add_ray(p)

    p = sub.add_parser("run", help="the main job: train a tokenizer on a sample, then encode everything")
    p.set_defaults(func=_json_only_on_stdout(cmd_run))
    _add_source(p, required=False)
    p.add_argument("--out", required=True, help="output directory (tokenizer in OUT/tokenizer)")
    _add_training(p)
    _add_encoding(p)
    _add_ray(p)

    p = sub.add_parser("inspect", help="summarise and verify a shard directory or a tokenizer directory")
    p.add_argument("path")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_json_only_on_stdout(cmd_inspect))

    p = sub.add_parser("mix", help="plan token-exact mixtures of runs: shuffled, best-fit packed rows")
    p.add_argument("sources", nargs="+", metavar="NAME=RUN:WEIGHT",
                   help="a finished `tokshard encode` run (local or fsspec URL), its name and weight (default 1); "
                   "weights are shares of tokens, not documents")
    p.add_argument("--tokens", type=int, default=None, help="training tokens to plan (rows x seq-len; default: one "
                   "pass over the sources' documents)")
    p.add_argument("--seq-len", type=int, default=mix.DEFAULT_SEQ_LEN, help="context length; rows hold seq-len + 1 "
                   "tokens")
    p.add_argument("--seed", type=int, default=0, help="document shuffle")
    p.add_argument("--max-epochs", type=float, default=mix.DEFAULT_MAX_EPOCHS, help="refuse a plan that repeats a "
                   "source more often")
    p.add_argument("--split-long-docs", action="store_true", help="cut documents longer than a row into row-sized "
                   "pieces, each masked as its own document, instead of keeping only their first row (far less waste "
                   "on long documents; rows may then start mid-document)")
    p.add_argument("--out", required=True, help="plan directory (plan.json, segments.npy, rows.npy); local "
                   "or fsspec URL")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_json_only_on_stdout(cmd_mix))

    p = sub.add_parser("export", help="write the shards of a run, or the rows of a plan, in another trainer's format")
    p.add_argument("--format", required=True, choices=export.FORMATS,
                   help="nanogpt: modded-nanogpt / llm.c .bin files (256-int32 header, uint16 tokens); megatron: "
                   "Megatron-LM's indexed dataset (train/val .bin + .idx)")
    p.add_argument("outdir", help="a complete `tokshard encode` output directory, or a `tokshard mix` "
                   "plan (local or fsspec URL)")
    p.add_argument("dest", help="directory to write, local or fsspec URL (must not already hold exported files)")
    p.add_argument("--tokens-per-file", type=int, default=export.DEFAULT_TOKENS_PER_FILE,
                   help="nanogpt: tokens per exported file at most")
    p.add_argument("--shuffle-block", type=int, default=None, metavar="ROWS",
                   help=f"a plan's train rows are written in tokshard.data's read order: blocks of ROWS rows, each "
                   f"permuted by the plan's seed (default {mix.SHUFFLE_BLOCK:,}, the loader's; 0 = the plan's order)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_json_only_on_stdout(cmd_export))

    _add_eval_tokenizer(sub)
    _add_plugin_commands(sub)
    return parser


def _add_eval_tokenizer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval-tokenizer", help="compare tokenizers on the same text (compression, fairness across "
                       "groups, speed); optionally a vocabulary-size sweep")
    p.set_defaults(func=_json_only_on_stdout(cmd_eval_tokenizer))
    p.add_argument("tokenizers", nargs="*", metavar="TOKDIR",
                   help="a tokshard tokenizer directory or any HF tokenizer.json (file or directory holding one); "
                   "local or fsspec URL")
    _add_source(p, required=False)
    p.add_argument("--out", required=True, help="report directory: report.json and PNG plots")
    p.add_argument("--group-by", default=None, metavar="COLUMN", help="report per value of this column "
                   "(e.g. language, domain)")
    p.add_argument("--group-regex", default=None, metavar="REGEX", help="group by this regex's first capture group "
                   "in the --group-by value (e.g. '^[a-z]+://([^/]+)' for a URL's host)")
    p.add_argument("--parallel-key", default=None, metavar="COLUMN", help="rows with the same key in different "
                   "groups hold the same content: report each group's token premium")
    p.add_argument("--reference", default=None, metavar="GROUP", help="the group premiums are relative to")
    p.add_argument("--limit-docs", type=int, default=None, help="evaluate on the first N documents only")
    p.add_argument("--max-bytes", type=int, default=evaluate.DEFAULT_MAX_BYTES,
                   help="evaluate on the first documents up to about this many bytes of text")
    p.add_argument("--repeats", type=int, default=evaluate.DEFAULT_REPEATS, help="throughput: best of N runs")
    p.add_argument("--force", action="store_true", help="replace a report made with other settings")
    p.add_argument("--sweep", default=None, metavar="SIZES", help="also train these vocabulary sizes on one sample "
                   "and evaluate them, e.g. 8k,16k,32k,64k (into OUT/tokenizers/vocab-N)")
    p.add_argument("--train-source", default=None, help="--sweep: what to train on (default: --source)")
    p.add_argument("--sample-bytes", type=int, default=jobs.DEFAULT_SAMPLE_BYTES, help="--sweep: training sample")
    p.add_argument("--pattern", default=DEFAULT_PATTERN, help="--sweep: split pattern (as train-tokenizer)")
    p.add_argument("--seed", type=int, default=0, help="--sweep: sample seed")
    p.add_argument("--sweep-alpha", default=None, metavar="A,...", help="instead train the one --sweep size once per "
                   "alpha, balanced by --balance-by (e.g. 1,0.5,0.3,0; into OUT/sweep-alpha/alpha-A): the premium "
                   "trade-off curve")
    p.add_argument("--balance-by", default=None, metavar="COLUMN", help="--sweep-alpha: the groups to balance")
    p.add_argument("--balance-weights", default=None, metavar="G=W,...", help="--sweep-alpha: as train-tokenizer")
    _add_ray(p)


def cmd_mix(args: argparse.Namespace) -> int:
    specs = [mix.parse_source(a) for a in args.sources]
    plan, packed = mix.build_plan(specs, args.tokens, args.seq_len, args.seed, args.max_epochs,
                                  split_long=args.split_long_docs)
    mix.write_plan(args.out, plan, packed)
    _print(args, {**plan, "out": str(args.out)}, [mix.describe(plan) + f" -> {args.out}"])
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    summary = export.export(args.outdir, args.dest, args.format, tokens_per_file=args.tokens_per_file,
                            shuffle_block=args.shuffle_block)
    _print(args, summary, [export.describe(summary)])
    return 0


def cmd_eval_tokenizer(args: argparse.Namespace) -> int:
    # Throughput is defined single-threaded: the engines' Rust pools read this when they start (Ray tasks set it too).
    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    report = evaluate.run(
        args.tokenizers, args.out, source=args.source, text_column=args.text_column, id_column=args.id_column,
        group_by=args.group_by, group_regex=args.group_regex, parallel_key=args.parallel_key,
        reference=args.reference, limit_docs=args.limit_docs, max_bytes=args.max_bytes, repeats=args.repeats,
        sweep=args.sweep, train_source=args.train_source, sample_bytes=args.sample_bytes, pattern=args.pattern,
        seed=args.seed, address=args.address, workers=args.workers, force=args.force, sweep_alpha=args.sweep_alpha,
        balance_by=args.balance_by, balance_weights=args.balance_weights, log=lambda line: print(line, file=sys.stderr))
    _print(args, report, eval_report.summary_lines(report, args.out))
    return 0


def _add_plugin_commands(sub: argparse._SubParsersAction) -> None:
    """Let installed rooms register subcommands: each entry point is a callable taking the subparsers object."""
    for ep in entry_points(group="tokshard.commands"):
        try:
            register = ep.load()
        except ModuleNotFoundError as e:
            if e.name and ep.value.startswith(e.name):  # that room is not part of this installation
                continue
            raise
        register(sub)


def _print(args: argparse.Namespace, summary: dict[str, Any], lines: list[str]) -> None:
    if args.json:
        print(json.dumps(summary, indent=2), file=getattr(args, "stdout", sys.stdout))
    else:
        print("\n".join(lines))


def _json_only_on_stdout(cmd: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """With --json, stdout carries the JSON summary alone: Ray prints worker and raylet messages (a lost worker, a
    retried task) to the driver's stdout, so while the command runs they are sent to stderr."""
    @functools.wraps(cmd)
    def run(args: argparse.Namespace) -> int:
        if not getattr(args, "json", False):
            return cmd(args)
        args.stdout = sys.stdout
        with contextlib.redirect_stdout(sys.stderr):
            return cmd(args)
    return run


def _encode_lines(s: dict[str, Any]) -> list[str]:
    lines = [
        f"encoded {s['documents']:,} documents into {s['tokens']:,} tokens in {s['shards']} shards -> {s['out']}",
        f"  {s['text_bytes'] / 1e6:,.1f} MB of text, {s['bytes_per_token']:.3f} bytes/token, "
        f"{s['seconds']:.1f} s, {s['tokens_per_s'] / 1e6:.2f} M tokens/s ({s['engine']}, {s['executor']})",
    ]
    if s.get("slices_kept"):
        lines.append(f"  resumed: kept {s['slices_kept']} finished slice(s) that verified, encoded "
                     f"{s['slices_encoded']}")
    for split, t in s["splits"].items():
        lines.append(f"  {split}: {t['documents']:,} docs, {t['tokens']:,} tokens, {t['shards']} shards, "
                     f"{t['bytes_per_token']:.3f} bytes/token")
    lines += [f"  ERROR {e}" for e in s["errors"]]
    if not s["complete"]:
        lines.append(f"  INCOMPLETE: {len(s['errors'])} slice(s) failed; fix them and run again")
    return lines


def _train_lines(s: dict[str, Any]) -> list[str]:
    if s.get("reused"):
        return [f"reusing the {s['vocab_size']:,}-token tokenizer this run trained before -> {s['tokenizer']}",
                f"  tokenizer.json sha256 {s['sha256']}"]
    return [f"trained a {s['vocab_size']:,}-token tokenizer on {s['sample_documents']:,} documents "
            f"({s['sample_bytes'] / 1e6:,.1f} MB) in {s['seconds']:.1f} s -> {s['tokenizer']}",
            f"  tokenizer.json sha256 {s['sha256']}",
            *(balance.summary_lines(s["balance"]) if "balance" in s else [])]


def cmd_train_tokenizer(args: argparse.Namespace) -> int:
    storage.check_writable(args.out)  # before any task: a bad bucket/endpoint/credentials is exit 2 at once
    if args.balance_by is None and (args.balance_alpha is not None or args.balance_weights):
        raise ValueError("--balance-alpha and --balance-weights need --balance-by COLUMN")
    alpha = balance.DEFAULT_ALPHA if args.balance_alpha is None else args.balance_alpha
    result = jobs.train_tokenizer(args.source, args.out, vocab_size=args.vocab_size, sample_bytes=args.sample_bytes,
                                  pattern=args.pattern, seed=args.seed, text_column=args.text_column,
                                  id_column=args.id_column, address=args.address, workers=args.workers,
                                  superbpe_transition=args.superbpe_transition, balance_by=args.balance_by,
                                  balance_alpha=alpha,
                                  balance_weights=balance.parse_weights(args.balance_weights),
                                  in_process=args.in_process, show_progress=args.progress)
    _print(args, result.summary(), _train_lines(result.summary()))
    return 0


def _encode(args: argparse.Namespace, tokenizer_dir: str) -> jobs.EncodeResult:
    return jobs.encode(args.source, tokenizer_dir, args.out, workers=args.workers, val_fraction=args.val_fraction,
                       text_column=args.text_column, id_column=args.id_column, slice_bytes=args.slice_mb << 20,
                       address=args.address, show_progress=args.progress, limit_docs=args.limit_docs,
                       limit_files=args.limit_files, in_process=args.in_process)


def cmd_encode(args: argparse.Namespace) -> int:
    result = _encode(args, args.tokenizer)
    _print(args, result.summary(), _encode_lines(result.summary()))
    return 0 if result.complete else EXIT_INCOMPLETE


def cmd_run(args: argparse.Namespace) -> int:
    storage.check_writable(args.out)  # before any task: a bad bucket/endpoint/credentials is exit 2 at once
    remote = storage.is_url(args.out)
    tmp_parent = None if remote else Path(args.out)  # train beside a local OUT, in the system's temp dir for a URL
    if tmp_parent is not None:
        for stale in tmp_parent.glob(f"{TRAIN_TMP_PREFIX}*"):  # left by a run that was killed while training
            shutil.rmtree(stale, ignore_errors=True)
    settings = {"vocab_size": args.vocab_size, "sample_bytes": args.sample_bytes, "pattern": args.pattern,
                "seed": args.seed, "text_column": args.text_column, "id_column": args.id_column,
                "superbpe_transition": args.superbpe_transition}
    out_tok = storage.join(args.out, "tokenizer")
    with jobs.ray_session(args.address, args.workers), tempfile.TemporaryDirectory(dir=tmp_parent,
                                                                                   prefix=TRAIN_TMP_PREFIX) as tmp:
        trained = jobs.reusable_tokenizer(out_tok, args.source, **settings)
        if trained is None:
            # Trained beside OUT: encode checks OUT belongs to this run before it copies the tokenizer in.
            trained = jobs.train_tokenizer(args.source, Path(tmp) / "tokenizer", in_process=args.in_process,
                                           show_progress=args.progress, **settings)
        result = _encode(args, str(trained.tokenizer_dir))
        trained.tokenizer_dir = out_tok if remote else Path(out_tok)
    summary = {"tokenizer": trained.summary(), **result.summary()}
    _print(args, summary, _train_lines(trained.summary()) + _encode_lines(result.summary()))
    return 0 if result.complete else EXIT_INCOMPLETE


def _tokenizer_problems(path: str) -> tuple[str, list[str]]:
    """What `Tokenizer.load` could check in a tokenizer directory (local or URL), and the files a complete one
    lacks.

    load verifies tokenizer.json against the sha256 in tokshard.json and token_bytes.npy against tokenizer.json,
    but only when those files are there; a directory without them loads, so inspect names each one missing."""
    problems = []
    recorded = None
    meta_path, bytes_path = storage.join(path, METADATA_JSON), storage.join(path, TOKEN_BYTES_NPY)
    if storage.exists(meta_path):
        recorded = storage.read_json(meta_path).get("tokenizer_json_sha256")
        if recorded is None:
            problems.append(f"{meta_path}: records no tokenizer_json_sha256, so {TOKENIZER_JSON} cannot "
                            "be verified; re-save the tokenizer")
    else:
        problems.append(f"{meta_path}: missing, so {TOKENIZER_JSON} cannot be verified (and the training "
                        "record is lost); re-save the tokenizer or copy the whole directory")
    if not storage.exists(bytes_path):
        problems.append(f"{bytes_path}: missing (bits-per-byte needs it); re-save the tokenizer")
    verified = f"verified against {METADATA_JSON}" if recorded is not None else "NOT verified"
    return verified, problems


def _inspect_tokenizer(path: str) -> tuple[dict[str, Any], list[str], list[str]]:
    tok = Tokenizer.load(path)  # verifies the sha256 recorded in tokshard.json, when it is there
    meta = tok.metadata
    verified, problems = _tokenizer_problems(path)
    summary = {"kind": "tokenizer", "path": str(path), "vocab_size": tok.vocab_size, "dtype": tok.dtype.name,
               "pattern_name": tok.pattern_name, "pattern": tok.pattern, "special_tokens": tok.special_tokens,
               "sha256": tok.sha256, "sha256_verified": verified.startswith("verified"), "engine": tok.engine,
               "training": meta.get("training"), "problems": problems}
    lines = [f"tokenizer {path}: vocab {tok.vocab_size:,} ({tok.dtype.name} ids), pattern {tok.pattern_name}, "
             f"engine {tok.engine}",
             f"  special tokens: {', '.join(f'{k}={v}' for k, v in tok.special_tokens.items())}",
             f"  sha256 {tok.sha256} ({verified})"]
    if meta.get("training"):
        t = meta["training"]
        lines.append(f"  trained on {t.get('sample_documents', '?'):,} docs / {t.get('sample_bytes', 0) / 1e6:,.1f} MB "
                     f"of {t.get('source')} in {t.get('seconds', '?')} s")
        if t.get("balance"):
            lines += ["  " + line for line in balance.summary_lines(t["balance"])]
    return summary, lines, problems


def _inspect_shards(path: str) -> tuple[dict[str, Any], list[str], list[str]]:
    manifest = Manifest.read(path)
    problems = manifest.verify(path) + [f"run incomplete: {e}" for e in manifest.data.get("errors", [])]
    totals = manifest.totals()
    # On an object store: shard objects of attempts that never committed (removed at the end of the next run).
    uncommitted = unlisted_shards(path, manifest.shards) if storage.is_url(path) else []
    summary = {"kind": "shards", "path": str(path), "tokenizer": manifest.tokenizer, "totals": totals,
               "shards": len(manifest.shards), "uncommitted": uncommitted, "problems": problems}
    lines = [f"shards {path}: {len(manifest.shards)} shards verified against {MANIFEST}, "
             f"tokenizer {manifest.tokenizer['sha256'][:12]}… ({manifest.tokenizer['dtype']}), "
             f"encoded by {manifest.tokenizer.get('engine', 'an unrecorded engine')}"]
    for split in ("train", "val", "all"):
        t = totals[split]
        lines.append(f"  {split:5s}: {t['documents']:,} docs, {t['tokens']:,} tokens, {t['text_bytes'] / 1e6:,.1f} MB,"
                     f" {t['bytes_per_token']:.3f} bytes/token")
    if uncommitted:
        more = " …" if len(uncommitted) > 5 else ""
        lines.append(f"  {len(uncommitted)} uncommitted object(s) of dead attempts, not part of the run (the next "
                     f"run into {path} removes them): {', '.join(uncommitted[:5])}{more}")
    return summary, lines, problems


def cmd_inspect(args: argparse.Namespace) -> int:
    path = storage.display(args.path)
    if storage.exists(storage.join(path, MANIFEST)):
        summary, lines, problems = _inspect_shards(path)
    elif storage.exists(storage.join(path, TOKENIZER_JSON)):
        summary, lines, problems = _inspect_tokenizer(path)
    else:
        raise FileNotFoundError(f"{path} holds neither {MANIFEST} (a shard directory) nor {TOKENIZER_JSON} "
                                "(a tokenizer directory)")
    lines += [f"  PROBLEM {p}" for p in problems] or ["  no problems found"]
    _print(args, summary, lines)
    return EXIT_INCOMPLETE if problems else 0


def main_on_cluster(command: str, argv: list[str]) -> int:
    """What the `ray submit` scripts in deploy/jobs run: `command` joining the cluster they run on (--address auto)
    unless the arguments name another address."""
    joins = any(a == "--address" or a.startswith("--address=") for a in argv)
    return main([command, *argv] if joins else [command, "--address", "auto", *argv])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"tokshard {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
