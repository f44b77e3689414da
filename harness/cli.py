"""The `harness` command: argparse subcommands; main(argv) returns the exit code. The only module that prints.

Exit codes: 0 success; 2 bad input (unknown suite, key or name, wrong type, unreachable tracking store) or
cells that failed (their reasons are printed and in MLflow); 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys

from harness.report.terminal import add_leaderboard_options  # stdlib imports only: the CLI still answers at once
from harness.secrets import redact

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

USAGE_EXAMPLES = """examples:
  harness run suite=tiny
  harness run suite=tiny seeds=[0,1,2] algorithms.dpo.beta=0.3 only=[dpo]
  harness run suite=tiny executor.max_parallel=2          # two stages at once (one per GPU on a GPU node)
  harness run suite=tiny executor=ray ray.address=auto    # every stage a Ray task on a cluster
  harness plan suite=tiny                                 # the stages, what a rerun skips, what each asks for
  harness calibrate suite=tiny                            # measure throughput here: plan then estimates time
  harness report suite=tiny
  harness leaderboard suite=tiny --sort gold_reward
  harness list algorithms
  harness validate suite=tiny algorithms.grpo.beta=0.1
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness",
        description="Train one base model with several alignment algorithms under one budget, "
        "score every checkpoint with one evaluator, and compare them (MLflow + Markdown).",
        epilog=USAGE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    overrides_help = "suite=NAME (a name in suites/ or a YAML path) followed by key=value overrides"
    run = commands.add_parser("run", help="prepare, train, evaluate and report a suite (resumes if rerun)")
    run.add_argument("items", nargs="*", metavar="suite=NAME|key=value", help=overrides_help)

    plan = commands.add_parser(
        "plan",
        help="print a suite's stages (complete or to run, resources, what each waits on), the tokens each "
        "trains on and generates, and its estimated wall time and device-hours (see `harness calibrate`)",
    )
    plan.add_argument("items", nargs="*", metavar="suite=NAME|key=value", help=overrides_help)
    plan.add_argument(
        "--format", choices=["table", "json"], default="table", help="table (fitted to the terminal) or json"
    )

    calibrate = commands.add_parser(
        "calibrate",
        help="time a few training steps and generate calls on the suite's model here (seconds), fit start costs "
        "to its last run, and keep them in <output_dir>/throughput.json for `harness plan`'s estimate",
    )
    calibrate.add_argument("items", nargs="*", metavar="suite=NAME|key=value", help=overrides_help)

    report = commands.add_parser("report", help="write reports/<suite>.md from the MLflow store")
    report.add_argument("items", nargs="*", metavar="suite=NAME|key=value", help=overrides_help)

    leaderboard = commands.add_parser(
        "leaderboard",
        help="print the comparison table in the terminal (fitted to its width; --format markdown|csv|json)",
    )
    add_leaderboard_options(leaderboard)

    listing = commands.add_parser("list", help="list suites, algorithms, tasks, metrics or generators")
    listing.add_argument(
        "what",
        nargs="?",
        default="all",
        choices=["all", "suites", "algorithms", "tasks", "metrics", "generators", "backends"],
    )
    listing.add_argument("name", nargs="?", help="an algorithm: print its options with their defaults and meaning")

    validate = commands.add_parser("validate", help="resolve and type-check a suite; run nothing")
    validate.add_argument("items", nargs="*", metavar="suite=NAME|key=value", help=overrides_help)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_OK
    _configure_logging(args.verbose)
    handlers = {
        "run": command_run,
        "plan": command_plan,
        "calibrate": command_calibrate,
        "report": command_report,
        "leaderboard": command_leaderboard,
        "list": command_list,
        "validate": command_validate,
    }
    from harness.errors import UserError  # ConfigError, unknown names, refused runs, bad data, an unreachable store

    try:
        return handlers[args.command](args)
    except UserError as error:
        return _fail(str(error))
    except KeyboardInterrupt:
        _err("interrupted: completed stages are kept; rerun the same command to resume")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `harness list algorithms | head`: the reader has gone, the rest is not wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # and no second error at exit's flush
        return EXIT_OK


# ---------------------------------------------------------------------------------------------------------


def _split_items(items: list[str]) -> tuple[str, list[str]]:
    from harness.errors import ConfigError

    suite = None
    overrides = []
    for item in items:
        if item.startswith("suite="):
            suite = item.split("=", 1)[1]
        else:
            overrides.append(item)
    if not suite:
        raise ConfigError("missing suite=NAME (see `harness list suites`)")
    return suite, overrides


def _load(items):
    from harness.config import load_config

    suite, overrides = _split_items(items)
    return load_config(suite, overrides)


def command_validate(args) -> int:
    from harness.config import fingerprint

    config = _load(args.items)
    if config.suite.executor.name == "ray":  # a malformed cluster address is bad input like a wrong key
        from harness.executors.ray_cluster import head_of

        head_of(config.suite.ray.address)
    print(redact(config.to_yaml()), end="")  # a pasted key or a URI's password is not shown back
    print(f"# valid: suite '{config.suite.name}', config hash {fingerprint(config.to_dict())}")
    return EXIT_OK


def command_run(args) -> int:
    import signal

    from harness.pipeline import ready_to_run, run_suite

    # SIGTERM (a scheduler's cancel, `kill`) ends the run like Ctrl-C: runs marked KILLED, stages kept.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    config = _load(args.items)
    _quiet_library_progress_bars()
    # transformers' own bars ("Writing model shards", "Loading weights") ignore the Hub's variable.
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    console = _console()
    # Everything that can refuse the run (output folder, judge endpoint, cluster, tracking store) answers
    # before the banner: a refused run prints its one error line and nothing else.
    with ready_to_run(config) as tracker:
        console.print(redact(_banner(config)), soft_wrap=not console.is_terminal, markup=False)
        outcome = run_suite(config, RichReporter(console), tracker)

    console.print()
    for cell in outcome.cells:
        mark = {"complete": "[green]done[/green]", "skipped": "[dim]kept[/dim]", "failed": "[red]FAILED[/red]"}[
            cell.status
        ]
        console.print(f"  {mark} {cell.name}  {redact(cell.failure)}")
    if outcome.report_path:
        console.print(f"report: [bold]{outcome.report_path}[/bold]", soft_wrap=True)
    console.print(
        f"MLflow experiment '{outcome.experiment}' at {redact(outcome.tracking_uri)}", soft_wrap=True, markup=False
    )
    _print_leaderboard_link(
        outcome.leaderboard, outcome.tracking_uri, lambda line: console.print(line, soft_wrap=True, markup=False)
    )
    if outcome.failed:
        names = ", ".join(cell.name for cell in outcome.failed)
        return _fail(f"{len(outcome.failed)} cell(s) failed: {names} (reasons above and in MLflow)")
    return EXIT_OK


def _banner(config) -> str:
    """One line: the algorithms as a count ("13 algorithms"), named only when there are a few; wrapped by the
    terminal where there is one, never by us in a log."""
    from harness.pipeline import executor_label

    arms = config.selected_arms
    algorithms = ", ".join(arms) if len(arms) <= 3 else f"{len(arms)} algorithms"
    return (
        f"harness run suite={config.suite.name} seeds={config.suite.seeds} {algorithms} (+ sft baseline) "
        f"executor={executor_label(config)}"
    )


def _tracking_uri(config) -> str:
    from harness.pipeline import tracking_uri_of

    return tracking_uri_of(config)


def command_plan(args) -> int:
    """The plan as a table, from the config and the run folders alone (nothing heavy is imported), with each
    stage's tokens and, where this machine is calibrated for the suite's model, its seconds and the totals."""
    import json
    import shutil

    from harness.estimate.plan_cost import estimate_plan
    from harness.plan import REPORT, build_plan

    config = _load(args.items)
    plan = build_plan(config)
    estimate = estimate_plan(config, plan)
    if args.format == "json":
        stages = [stage.to_dict() for stage in plan.stages]
        for stage, cost in zip(stages, estimate.to_dict()["stages"]):
            stage["estimate"] = cost
        print(
            json.dumps({"suite": plan.suite, "root": str(plan.root), "stages": stages, "estimate": estimate.to_dict()})
        )
        return EXIT_OK
    rows = []
    for stage, cost in zip(plan.stages, estimate.stages):
        state = "runs last" if stage.kind == REPORT else ("complete: skipped" if stage.done else "to run")
        resources = f"{stage.gpus} GPU, {stage.cpus or 'auto'} CPU" + (
            f", {stage.memory_gb:g} GiB" if stage.memory_gb else ""
        )
        if stage.processes > 1:
            resources += f", {stage.processes} processes"
        work = cost.work
        tokens = (
            "/".join(_count(n) for n in (work.trained, work.scored, work.generated))
            if any((work.trained, work.scored, work.generated))
            else "-"
        )
        seconds = "?" if cost.seconds is None else _duration(cost.seconds)
        waits = ", ".join(stage.waits_on) if stage.kind != REPORT else "every cell"
        if stage.soft_waits and stage.kind != REPORT:
            waits += f" (and {', '.join(stage.soft_waits)} if it completes)"
        rows.append((stage.id, stage.hash or "-", state, resources, tokens, seconds, waits or "-"))
    header = ("stage", "hash", "state", "asks for", "tokens train/score/gen", "time", "waits on")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    columns = shutil.get_terminal_size().columns if sys.stdout.isatty() else 10**6  # a pipe gets whole lines
    for row in [header, *rows]:
        line = "  ".join(str(value).ljust(width) for value, width in zip(row, widths)).rstrip()
        print(line if len(line) <= columns else line[: max(columns - 1, 0)] + "…")
    to_run = sum(1 for stage in plan.stages if stage.kind != REPORT and not stage.done)
    print(
        f"# {len(plan.stages) - 1} stages, {to_run} to run, {len(plan.stages) - 1 - to_run} complete; "
        f"run folders in {plan.root}"
    )
    for line in _estimate_lines(estimate, config.suite.name):
        print(line)
    return EXIT_OK


def _estimate_lines(estimate, suite: str) -> list[str]:
    """The estimate's summary: where its numbers come from, the serial and parallel wall time, device-hours."""
    lengths = estimate.lengths
    source = f"tokens counted at prompt {lengths.prompt:.0f} + completion {lengths.completion:.0f} ({lengths.source})"
    if not estimate.calibrated:
        return [
            f"# {source}; time uncalibrated: no entry for {estimate.device}, {estimate.model}, {estimate.precision} "
            f"in {estimate.table}; measure it with `harness calibrate suite={suite}` (seconds)"
        ]
    hours = estimate.device_hours
    named = sorted((name for name in hours if name != "shared"), key=lambda name: -hours[name])
    per_algorithm = ", ".join(f"{name} {hours[name]:.3g}" for name in [*named, "shared"] if name in hours)
    workers = f"{estimate.workers} workers" if estimate.workers > 1 else "1 worker"
    return [
        f"# {source}; rates for {estimate.device}, {estimate.model}, {estimate.precision} ({estimate.rates.source})",
        f"# estimate: {_duration(estimate.serial_seconds)} one stage at a time, "
        f"{_duration(estimate.parallel_seconds)} with {workers} ({estimate.threads} cores each)",
        f"# {estimate.hours_unit}: {sum(hours.values()):.3g} in all; by algorithm: {per_algorithm}",
    ]


def _count(tokens: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if tokens >= size:
            return f"{tokens / size:.3g}{unit}"
    return f"{tokens:.0f}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{rest:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def command_calibrate(args) -> int:
    """Measure this machine's throughput on the suite's model (harness.estimate.calibrate), then say what the
    plan now estimates."""
    from harness.estimate.calibrate import calibrate
    from harness.estimate.plan_cost import estimate_plan
    from harness.plan import build_plan

    config = _load(args.items)
    _quiet_library_progress_bars()
    path, keys, fit, note = calibrate(config)
    from harness.estimate.throughput import read_table

    table = read_table(path)
    for key in keys:
        rates = table.entries[key]
        print(
            f"{key}: {rates.seconds_per_trained_token:.3g} s per trained token, "
            f"{rates.seconds_per_generated_token:.3g} s per generated token"
        )
    if fit:
        print(f"start costs and scales fitted to {fit.stages} timed stages of {fit.source}")
    else:
        print(note or "start costs as measured here (run the suite once, then calibrate again, to fit them to a run)")
    print(f"written to {path}")
    for line in _estimate_lines(estimate_plan(config, build_plan(config)), config.suite.name):
        print(line)
    return EXIT_OK


def command_report(args) -> int:
    from harness.pipeline import write_report

    config = _load(args.items)
    _quiet_library_progress_bars()
    path, link = write_report(config, _tracking_uri(config))
    print(f"report: {path}")
    _print_leaderboard_link(link, _tracking_uri(config), print)
    return EXIT_OK


def _print_leaderboard_link(link, tracking_uri: str, say) -> None:
    """The command's last lines: the link that opens the leaderboard (the runs table of harness/<suite>/
    leaderboard, sorted by the headline metric, its columns shown), the per-seed cells, and how to serve them."""
    if link is None:
        return
    say = _redacting(say)  # a tracking server's URL may carry user:password@
    server = tracking_uri.startswith(("http://", "https://"))  # a tracking server serves its own UI
    base = tracking_uri if server else "http://127.0.0.1:5000"
    say(f"leaderboard: {link.url(base)}")
    say(f"every cell (one run per algorithm and seed): {link.cells_url(base)}")
    if not server:
        say(f"open it with: mlflow ui --backend-store-uri {tracking_uri}")


def _redacting(say):
    return lambda line: say(redact(line))


def command_leaderboard(args) -> int:
    from harness.report.terminal import command_leaderboard as print_leaderboard

    return print_leaderboard(args)


def command_list(args) -> int:
    from harness.config import read_yaml, suite_names, suite_path
    from harness.errors import ConfigError
    from harness.metrics.catalog import METRICS
    from harness.registry import ALGORITHMS, GENERATORS, TASKS

    what = "generators" if args.what == "backends" else args.what
    if args.name is not None:
        if what != "algorithms":
            raise ConfigError(
                f"`harness list {args.what} NAME` is not a listing; try `harness list algorithms {args.name}`"
            )
        return _describe_algorithm(args.name)
    sections = {
        "suites": [(name, read_yaml(suite_path(name)).get("description", "")) for name in suite_names()],
        "algorithms": [(entry.name, entry.summary) for entry in ALGORITHMS.entries()],
        "tasks": [(entry.name, entry.summary) for entry in TASKS.entries()],
        "metrics": _metric_rows(METRICS.values()),
        "generators": [(entry.name, entry.summary) for entry in GENERATORS.entries()],
    }
    for section, rows in sections.items():
        if what not in ("all", section):
            continue
        print(f"{section}:")
        width = max((len(name) for name, _ in rows), default=0)
        for name, summary in rows:
            print(f"  {name:<{width}}  {summary}")
    return EXIT_OK


def _describe_algorithm(name: str) -> int:
    """One algorithm as a user chooses it: what it is, what it declares, and every option with its default
    (a variant's preset applied) and meaning."""
    import dataclasses
    import shutil
    import textwrap

    from harness.algorithms.spec import algorithm
    from harness.config import build, field_help
    from harness.registry import ALGORITHMS

    resolved = algorithm(name)  # UnknownNameError with the closest names
    spec, target = resolved.spec, ALGORITHMS.entry(name).target
    print(f"{name}: {ALGORITHMS.entry(name).summary}")
    module_name, _, preset = target.partition(":")
    print(
        f"  {module_name}"
        + (f", preset {preset} (a variant: its base's trainer with other defaults)" if preset else "")
    )
    direction = "more" if spec.kl_knob_raises_kl else "less"
    print(
        f"  family: {spec.family}; KL knob: {spec.kl_knob} (a larger value allows {direction} KL); "
        f"{'trains the policy' if spec.trains_policy else 'trains nothing (inference time)'}"
    )
    print()
    print(resolved.about)
    defaults = build(resolved.config_class, dict(resolved.defaults), f"algorithms.{name}.")
    helps = field_help(resolved.config_class)
    values = {field.name: repr(getattr(defaults, field.name)) for field in dataclasses.fields(defaults)}
    width = max(len(f"{option} = {value}") for option, value in values.items())
    print(f"\noptions (algorithms.{name}.<option>=value; default, then meaning):")
    columns = max(shutil.get_terminal_size().columns, width + 40)
    for option, value in values.items():
        preset_mark = " *" if option in resolved.defaults else "  "
        print(
            textwrap.fill(
                helps.get(option, ""),
                columns,
                initial_indent=f"  {f'{option} = {value}':<{width}}{preset_mark} ",
                subsequent_indent=" " * (width + 5),
            )
        )
    if resolved.defaults:
        print("  (* set by the preset)")
    return EXIT_OK


def _metric_rows(metrics) -> list[tuple[str, str]]:
    """Per metric: direction (with its arrow), level, unit in aligned columns, then what it is and where it comes
    from (the samples.jsonl field it averages, or that it is computed over the whole corpus)."""
    metrics = list(metrics)
    unit_width = max((len(metric.unit) for metric in metrics), default=0)
    rows = []
    for metric in metrics:
        scale = "" if metric.field_scale == 1 else f"{metric.field_scale:g} x "
        source = f"{scale}mean of samples.jsonl `{metric.field}`"
        if metric.level == "corpus":
            source = "over all completions"
        direction = f"{metric.arrow or '·'} {metric.direction}"
        rows.append(
            (
                metric.name,
                f"{direction:<9} {metric.level:<6}  {metric.unit:<{unit_width}}  {metric.description} ({source})",
            )
        )
    return rows


# ---------------------------------------------------------------------------------------------------------


class RichReporter:
    """Stage lines as they happen, and a transient progress bar for every training and sampling stage."""

    STYLES = {"start": "cyan", "done": "green", "skip": "dim", "fail": "red", "info": "magenta"}
    WORDS = {"start": "…", "done": "✓", "skip": "↷", "fail": "✗", "info": "·"}

    def __init__(self, console):
        self.console = console

    def stage(self, label: str, state: str, detail: str = "") -> None:
        style = self.STYLES.get(state, "white")
        detail = redact(detail)  # a failure's reason may quote a URI or a setting
        self.console.print(f"[{style}]{self.WORDS.get(state, '-')} {label}[/{style}] {detail}".rstrip(), soft_wrap=True)

    @contextlib.contextmanager
    def progress(self, description: str, total: int | None = None):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

        if not self.console.is_terminal:  # a log file gets the stage lines, not bar redraws
            yield lambda steps=1, total=None: None
            return
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        ) as bar:
            task = bar.add_task(description, total=total)

            def advance(steps: int = 1, total: int | None = None) -> None:
                if total is not None:
                    bar.update(task, total=total)
                bar.advance(task, steps)

            yield advance


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def _quiet_library_progress_bars() -> None:
    """Dataset-map and weight-loading bars from datasets/transformers would interleave with ours."""
    import os

    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # With a tracking server MLflow prints "View run ... at <url>" for every run it closes.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # TRL imports vLLM when it is installed; its import-time notices (e.g. about Triton on CPU) are noise here.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")


def _console():
    from rich.console import Console

    return Console(highlight=False)


def _configure_logging(verbose: bool) -> None:
    import os

    # MLflow sets its own loggers to INFO when imported ("Creating initial MLflow database tables..."); its
    # variable is read at that import, so it is set here, before any command imports mlflow.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "DEBUG" if verbose else "WARNING")
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    from harness.secrets import RedactingFilter

    for handler in logging.getLogger().handlers:  # every log line, ours and the libraries', without secrets
        handler.addFilter(RedactingFilter())
    # Libraries that talk a lot at INFO: keep their warnings only.
    for noisy in ("mlflow", "alembic", "urllib3", "httpx", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # sacrebleu warns that our references "end in a tokenized period": the synthetic language is
    # tokenized by design, and the signature records the tokenizer either way.
    logging.getLogger("sacrebleu").setLevel(logging.ERROR)
    # TRL imports vLLM when installed; its import-time notices (e.g. "Triton ... Disabling Triton" on CPU) are noise.
    logging.getLogger("vllm").setLevel(logging.ERROR)


def _err(message: str) -> None:
    print(f"harness: {redact(message)}", file=sys.stderr)  # an error never repeats a key or a password


def _fail(message: str) -> int:
    _err(f"error: {message}")
    return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
