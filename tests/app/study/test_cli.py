"""The study command line: a server killed with SIGKILL between and during answers keeps every committed
answer and resumes; validate/init/simulate/export/report end to end; generate --tiny; clear errors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from gradio_client import Client

from app.study.cli import main
from app.study.file import Study, save_study
from app.study.plan import item_id, study_texts
from app.study.records import AnswerRecord, TextRecord
from app.study.simulate import HttpBackend, run_rater
from app.study.store import StudyStore
from app.tables import read_csv

ROOT = Path(__file__).resolve().parents[3]
DEMO = ROOT / "assets" / "studies" / "demo.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _study(tokens: int = 40) -> Study:
    return Study.from_dict(
        {
            "id": "cli",
            "title": "CLI study",
            "consent": "c",
            "seed": 1,
            "conditions": [
                {"id": "a", "max_new_tokens": tokens},
                {"id": "b", "tsp": False, "max_new_tokens": tokens},
            ],
            "prompts": [{"id": f"p{i}", "text": f"Say {i}"} for i in range(3)],
            "questions": [{"id": "fluency", "text": "Fluent?"}, {"id": "relevance", "text": "Relevant?"}],
        }
    )


def _filled(path: Path, study: Study | None = None) -> StudyStore:
    store = StudyStore.create(path, study or _study())
    for k in study_texts(store.study):
        store.put_text(
            TextRecord(
                k.text_id, k.condition_id, k.prompt_id, k.sample, f"Word {k.text_id}", "eos", 3, 0.1, {}, {}
            )
        )
    return store


class Server:
    """`python -m app.study.cli serve` as a child process."""

    def __init__(self, db: Path, log: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        command = [sys.executable, "-m", "app.study.cli", "serve", "--db", str(db), "--port", str(self.port)]
        self.log = log.open("ab")
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdout=self.log, stderr=self.log, env=dict(os.environ)
        )
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(self.url, timeout=5):
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"the study server did not start; see {log}") from None
                time.sleep(0.3)

    def kill(self) -> None:
        self.process.kill()  # SIGKILL: no shutdown handlers, no flush
        self.process.wait(timeout=30)
        self.log.close()


def _check_committed(db: Path, recorded: dict[str, list[tuple[str, dict[str, Any]]]]) -> list[AnswerRecord]:
    store = StudyStore.open(db)
    assert store.integrity_check() == "ok"
    stored = store.answers()
    by_key = {(a.participant_id, a.item_id): a.answer for a in stored}
    for pid, answers in recorded.items():
        for item, answer in answers:
            assert by_key.get((pid, item)) == answer, f"committed answer of {pid} to {item} lost"
        positions = [a.position for a in stored if a.participant_id == pid]
        assert positions == list(range(len(positions)))  # contiguous: no gaps, no duplicates
        assert len(positions) - len(answers) in (0, 1)  # at most the one in flight at the kill
    return stored


def test_kill_and_restart_keeps_every_committed_answer(tmp_path: Path) -> None:
    db, log = tmp_path / "study.db", tmp_path / "server.log"
    store = _filled(db)
    recorded: dict[str, list[tuple[str, dict[str, Any]]]] = {f"k{i}": [] for i in range(4)}

    # 1. kill -9 between two answers
    server = Server(db, log)
    client = Client(server.url, verbose=False)
    for pid in ("k0", "k1"):
        item = client.predict(pid, True, api_name="/study_start")
        for _ in range(2):
            answer = {"fluency": 4, "relevance": 2}
            result = client.predict(pid, item["item_id"], _json(answer), api_name="/study_submit")
            recorded[pid].append((item["item_id"], answer))
            item = result["next"]
    server.kill()
    assert len(_check_committed(db, recorded)) == 4

    # 2. kill -9 while four participants are answering
    server = Server(db, log)

    def rater(pid: str) -> None:
        try:
            run_rater(
                store.study,
                HttpBackend(server.url),
                pid,
                on_answer=lambda i, a, r: recorded[pid].append((i, a)),
            )
        except Exception:  # the server died under it
            pass

    threads = [threading.Thread(target=rater, args=(pid,), daemon=True) for pid in recorded]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 120
    while sum(map(len, recorded.values())) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.kill()
    for thread in threads:
        thread.join(timeout=60)
    stored = _check_committed(db, recorded)
    assert 10 <= len(stored) < 4 * 6, "the kill should land mid-run"

    # 3. restart: everyone resumes where the database says and finishes
    server = Server(db, log)
    try:
        for pid in recorded:
            run_rater(
                store.study,
                HttpBackend(server.url),
                pid,
                on_answer=lambda i, a, r, p=pid: recorded[p].append((i, a)),
            )
    finally:
        server.kill()
    stored = _check_committed(db, recorded)
    assert len(stored) == 4 * 6
    for pid in recorded:  # the same sequence before and after the restarts
        expected = [item_id(store.secret, store.study, pid, key) for key in store.sequence(pid)]
        assert [a.item_id for a in stored if a.participant_id == pid] == expected


def _json(answer: dict[str, Any]) -> str:
    import json

    return json.dumps(answer)


def test_validate_init_simulate_export_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study_file, db, out = tmp_path / "study.yaml", tmp_path / "s.db", tmp_path / "report"
    save_study(_study(), study_file)
    assert main(["validate", str(study_file)]) == 0
    assert main(["init", str(study_file), "--db", str(db)]) == 0
    assert main(["serve", "--db", str(db), "--port", "0"]) == 2
    assert "not generated yet" in capsys.readouterr().err
    _filled(db)  # the texts, as generate would write them (generate itself: the next test)
    assert main(["simulate", "--db", str(db), "--raters", "3"]) == 0
    assert (
        main(["simulate", "--db", str(db), "--raters", "3"]) == 0
    )  # simulated raters resume: no new answers
    assert main(["export", "--db", str(db), "--csv", str(tmp_path / "a.csv")]) == 0
    rows = read_csv(tmp_path / "a.csv")
    assert len(rows) == 3 * 6 * 2 and {r["participant_id"] for r in rows} == {"sim-001", "sim-002", "sim-003"}
    assert main(["report", "--db", str(db), "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert (
        "SIMULATED" in report and "| fluency (1-5) | a | 9 |" in report and "derived from ratings" in report
    )
    assert (out / "means.png").stat().st_size > 1000 and (out / "answers.csv").is_file()
    assert main(["status", "--db", str(db)]) == 0
    assert "6 of 6 texts generated, 3 participants, 18 answers" in capsys.readouterr().out


def test_links_of_an_invite_only_study_are_its_invited_ids(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = Study.from_dict(_study().to_dict() | {"invited": ["p-01", "p-02"]})
    _filled(tmp_path / "i.db", study)
    assert main(["links", "--db", str(tmp_path / "i.db"), "--base-url", "http://h:1/", "--count", "5"]) == 0
    assert capsys.readouterr().out.split() == ["http://h:1/?participant=p-01", "http://h:1/?participant=p-02"]
    assert main(["simulate", "--db", str(tmp_path / "i.db"), "--raters", "1"]) == 2  # sim-001 is not invited
    assert "not on this study's invitation list" in capsys.readouterr().err
    _filled(tmp_path / "o.db")
    assert main(["links", "--db", str(tmp_path / "o.db"), "--count", "3"]) == 0  # open: fresh random ids
    assert len(set(capsys.readouterr().out.split())) == 3


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["validate", "{missing}"], ["cannot read the study file"]),
        (["validate", "{bad}"], ["not valid JSON"]),
        (["export", "--db", "{missing}", "--csv", "x.csv"], ["no study database", "init"]),
        (["report", "--db", "{empty}", "--out", "r"], ["no answers yet"]),
        (["init", "{demo}", "--db", "{empty}"], ["different study definition"]),
    ],
)
def test_errors_are_one_line_with_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], words: list[str]
) -> None:
    (tmp_path / "bad.json").write_text('{"id": ')
    _filled(tmp_path / "empty.db")
    paths = {"missing": tmp_path / "nope.json", "bad": tmp_path / "bad.json", "empty": tmp_path / "empty.db"}
    paths["demo"] = DEMO
    assert main([a.format(**paths) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    for word in words:
        assert word in err


def test_generate_with_the_tiny_model_draws_a_bar_and_resumes(tmp_path: Path) -> None:
    study_file, db = tmp_path / "study.json", tmp_path / "s.db"
    save_study(_study(tokens=2), study_file)
    assert main(["init", str(study_file), "--db", str(db)]) == 0
    command = [sys.executable, "-m", "app.study.cli", "generate", "--db", str(db), "--tiny"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "study texts" in done.stderr and "generated 6 text(s), 0 already stored" in done.stderr
    texts = StudyStore.open(db).texts()
    assert len(texts) == 6 and all(t.provenance["model"]["name"].startswith("tiny") for t in texts.values())
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "already generated" in again.stderr
