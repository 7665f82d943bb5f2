"""Command line of rating studies (issue 7): define, generate, serve, export, report.

    python -m app.study.cli validate assets/studies/demo.json
    python -m app.study.cli init assets/studies/demo.json --db runs/demo.db
    python -m app.study.cli generate --db runs/demo.db [--tiny | --model-path DIR] [--worker-url URL]
    python -m app.study.cli serve --db runs/demo.db --port 7861
    python -m app.study.cli links --db runs/demo.db --base-url http://host:7861 --count 20
    python -m app.study.cli simulate --db runs/demo.db --raters 12 [--url http://host:7861]   # NOT human
    python -m app.study.cli status --db runs/demo.db
    python -m app.study.cli export --db runs/demo.db --csv runs/demo.csv
    python -m app.study.cli report --db runs/demo.db --out runs/demo-report

`generate` is resumable: run it again after an interruption and it continues with the first missing
text. Errors print one line naming the problem and the fix, and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.model_options import add_model_arguments
from core.errors import ChatError, StudyStoreError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app.study.cli", description="Rating studies of generated text."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    validate = commands.add_parser("validate", help="check a study file and print its size")
    validate.add_argument("study", type=Path)
    init = commands.add_parser("init", help="create the study database from a study file")
    init.add_argument("study", type=Path)
    init.add_argument("--db", type=Path, required=True)
    generate = commands.add_parser("generate", help="generate the study's texts (resumable)")
    generate.add_argument("--db", type=Path, required=True)
    add_model_arguments(generate)
    generate.add_argument("--worker-url", default=os.environ.get("HE_CHAT_WORKER_URL"), help="encrypted mode")
    generate.add_argument("--preset", default="default", help="CKKS parameter preset (encrypted mode)")
    serve = commands.add_parser("serve", help="serve the participant page")
    serve.add_argument("--db", type=Path, required=True)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=7861)
    links = commands.add_parser(
        "links", help="print invitation links: the study's invited ids, else --count fresh random ids"
    )
    links.add_argument("--db", type=Path, required=True)
    links.add_argument("--base-url", default="http://127.0.0.1:7861")
    links.add_argument("--count", type=int, default=10)
    simulate = commands.add_parser("simulate", help="fill in answers by SIMULATED raters (demos, tests)")
    simulate.add_argument("--db", type=Path, required=True)
    simulate.add_argument("--raters", type=int, default=10)
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument("--url", help="answer through a running page instead of the database directly")
    status = commands.add_parser("status", help="texts generated, participants, answers")
    status.add_argument("--db", type=Path, required=True)
    export = commands.add_parser("export", help="CSV of every answer joined with its text's provenance")
    export.add_argument("--db", type=Path, required=True)
    export.add_argument("--csv", type=Path, required=True)
    report = commands.add_parser("report", help="Markdown report, PNG plot and CSV in a directory")
    report.add_argument("--db", type=Path, required=True)
    report.add_argument("--out", type=Path, required=True)
    return parser


def _open(db: Path) -> Any:
    from app.study.store import StudyStore

    return StudyStore.open(db)


def run_generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from app.chat.service import ChatService
    from app.model_options import load_model
    from app.study.generate import check_settings, generate_texts
    from core.progress import Progress

    store = _open(args.db)
    check_settings(store)
    if not store.missing_texts():
        print(f"all {len(store.texts())} texts are already generated", file=sys.stderr)
        return 0
    loaded = load_model(args)
    service = ChatService.create(loaded, args.worker_url, args.preset)
    worker = None
    bar = tqdm(total=0, unit="text", desc="study texts", file=sys.stderr)

    last_refresh = 0.0

    def on_progress(event: Progress) -> None:
        nonlocal last_refresh
        bar.set_postfix_str(event.note, refresh=False)
        now = time.monotonic()
        if event.done != bar.n or event.total != bar.total or now - last_refresh > 1.0:
            bar.total, bar.n, last_refresh = event.total, event.done, now
            bar.refresh()

    def open_session() -> Any:
        nonlocal worker
        if not service.worker_url:
            from app.chat.service import start_local_worker

            worker = start_local_worker(service)
        return service.open_encrypted()

    try:
        summary = generate_texts(store, service, on_progress, open_session)
    finally:
        bar.close()
        if worker is not None:
            worker.stop()
    print(
        f"generated {summary.generated} text(s), {summary.skipped} already stored, "
        f"{summary.total} in total ({summary.seconds:.1f} s)",
        file=sys.stderr,
    )
    return 0


def run_simulate(args: argparse.Namespace) -> int:
    from app.study.simulate import SIMULATED_PREFIX, HttpBackend, StoreBackend, run_rater

    store = _open(args.db)
    if args.raters < 1:
        raise StudyStoreError(f"--raters must be at least 1, got {args.raters}")
    total = 0
    for index in range(args.raters):
        backend = HttpBackend(args.url) if args.url else StoreBackend(store)
        total += run_rater(store.study, backend, f"{SIMULATED_PREFIX}{index + 1:03d}", seed=args.seed)
    print(f"{args.raters} simulated raters submitted {total} answers (NOT human judgements)", file=sys.stderr)
    return 0


def run_report(args: argparse.Namespace) -> int:
    from app.study.export import CSV_COLUMNS, export_rows
    from app.study.report import condition_means, plot_means, preferences, render_markdown
    from app.study.simulate import SIMULATED_PREFIX
    from app.tables import write_csv

    store = _open(args.db)
    rows = export_rows(store.study, store.answers(), store.texts())
    if not rows:
        raise StudyStoreError(f"{args.db} has no answers yet; serve the study (or simulate raters) first")
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "answers.csv", rows, CSV_COLUMNS)
    means = condition_means(rows)
    prefs = preferences(rows, [c.id for c in store.study.conditions])
    plot_means(store.study, means, args.out / "means.png")
    simulated = {r["participant_id"] for r in rows if str(r["participant_id"]).startswith(SIMULATED_PREFIX)}
    notes = []
    if simulated:
        notes.append(
            f"**{len(simulated)} of the raters are SIMULATED** (participant ids `{SIMULATED_PREFIX}*`, "
            "scores from a text heuristic plus noise): these numbers demonstrate the pipeline, "
            "not human judgement."
        )
    texts = sorted(store.texts().values(), key=lambda t: (t.prompt_id, t.sample, t.condition_id))
    text = render_markdown(store.study, rows, means, prefs, "means.png", notes, texts)
    (args.out / "report.md").write_text(text, encoding="utf-8")
    print(text)
    print(f"wrote {args.out / 'report.md'}, means.png and answers.csv", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.command == "validate":
        from app.study.file import load_study
        from app.study.plan import study_items, study_texts

        study = load_study(args.study)
        print(
            f"{args.study}: study {study.id!r} is valid: {len(study.conditions)} conditions, "
            f"{len(study.prompts)} prompts, {len(study_texts(study))} texts, "
            f"{len(study_items(study))} items per participant ({study.design.kind})"
        )
        return 0
    if args.command == "init":
        from app.study.file import load_study
        from app.study.store import StudyStore

        existed = args.db.exists()
        store = StudyStore.create(args.db, load_study(args.study))
        state = "already initialised from the same study" if existed else "created"
        print(f"{args.db}: {state}; {len(store.missing_texts())} texts to generate", file=sys.stderr)
        return 0
    if args.command == "generate":
        return run_generate(args)
    if args.command == "serve":
        from app.study.ui import launch_study_page

        if not 0 <= args.port <= 65535:
            raise StudyStoreError(f"--port must be between 0 and 65535, got {args.port}")
        store = _open(args.db)
        missing = store.missing_texts()
        if missing:
            raise StudyStoreError(
                f"{len(missing)} text(s) are not generated yet; "
                f"run `python -m app.study.cli generate --db {args.db}`"
            )
        print(
            f"Serving study {store.study.id!r} on http://{args.host}:{args.port}/?participant=<id>",
            file=sys.stderr,
        )
        launch_study_page(store, args.host, args.port, block=True)
        return 0
    if args.command == "links":
        invited = _open(args.db).study.invited  # an invitation list: exactly its ids (--count is ignored)
        for pid in invited or [f"p-{secrets.token_hex(6)}" for _ in range(args.count)]:
            print(f"{args.base_url.rstrip('/')}/?participant={pid}")
        return 0
    if args.command == "simulate":
        return run_simulate(args)
    if args.command == "status":
        store = _open(args.db)
        answers = store.answers()
        generated = len(store.texts())
        print(
            f"study {store.study.id!r}: {generated} of {generated + len(store.missing_texts())} "
            f"texts generated, {len(store.participants())} participants, {len(answers)} answers"
        )
        return 0
    if args.command == "export":
        from app.study.export import CSV_COLUMNS, export_rows
        from app.tables import write_csv

        store = _open(args.db)
        count = write_csv(args.csv, export_rows(store.study, store.answers(), store.texts()), CSV_COLUMNS)
        print(f"wrote {count} rows to {args.csv}", file=sys.stderr)
        return 0
    return run_report(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except ChatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
