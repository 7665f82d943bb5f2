"""The participant page of a study (Gradio): consent, participant id, one blind item at a time, progress.

Participants open `http://host:port/?participant=<id>` (the id is pre-filled; they can also type it),
agree to the consent text and rate one item at a time. Condition ids never reach the page: an item is
an opaque HMAC id (`app.study.plan`), the prompt and the text(s). Coming back with the same id resumes
at the first unanswered item, in the same order. Every answer is committed before the next item is
shown (`StudyStore.submit`); a rejected answer (missing rating, stale tab, tampered id) shows a message
and the page re-shows the participant's current item.

The same store calls are exposed as API endpoints, used by tests and by simulated raters:

    /study_start(participant_id, consent) -> item     /study_item(participant_id) -> item
    /study_submit(participant_id, item_id, answer_json) -> {"answer_id", "duplicate", "next": item, ...}

where item is `StudyStore.current_item` ({"done": true, ...} at the end).
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.study.answers import parse_answer_json
from app.study.store import StudyStore
from core.errors import AnswerError, InvalidAnswer, ParticipantError, StudyError

PAGE_CONCURRENCY = 16  # events served at once; SQLite serialises the writes, reads run in parallel


def _likert_choices(points: int, low: str, high: str) -> list[tuple[str, int]]:
    labels = {1: low, points: high}
    return [(f"{i} – {labels[i]}" if labels.get(i) else str(i), i) for i in range(1, points + 1)]


def build_study_page(store: StudyStore) -> gr.Blocks:
    """The participant page (and its API endpoints) for one study database."""
    study = store.study
    pairwise = study.design.kind == "pairwise"
    page: gr.Blocks
    with gr.Blocks(title=study.title) as page:
        participant = gr.State("")
        current = gr.State("")
        gr.Markdown(f"## {study.title}")
        with gr.Column(visible=True) as consent_box:
            gr.Markdown(study.consent)
            participant_box = gr.Textbox(label="Participant id", placeholder="from your invitation link")
            agree = gr.Checkbox(label="I have read the text above and agree to take part")
            start = gr.Button("Start", variant="primary")
        with gr.Column(visible=False) as item_box:
            progress = gr.Markdown()
            if study.instructions:
                gr.Markdown(study.instructions)
            prompt = gr.Textbox(label="The user's message", interactive=False, lines=2)
            with gr.Row():
                text_a = gr.Textbox(label="Reply A" if pairwise else "Reply", interactive=False, lines=6)
                text_b = gr.Textbox(label="Reply B", interactive=False, lines=6, visible=pairwise)
            choices = ["A", "B", "tie"] if study.design.allow_tie else ["A", "B"]
            preference = gr.Radio(choices, label=study.design.preference_text, visible=pairwise)
            fields: list[tuple[str, str, Any]] = []  # (question id, side, component)
            for question in study.questions:
                label = question.text + ("" if question.required else " (optional)")
                if question.kind == "text":
                    fields.append((question.id, "", gr.Textbox(label=label, lines=2)))
                    continue
                options = _likert_choices(question.points, question.low, question.high)
                if not pairwise:
                    fields.append((question.id, "", gr.Radio(options, label=label)))
                    continue
                with gr.Row():
                    for side in "AB":
                        fields.append((question.id, side, gr.Radio(options, label=f"{label} – reply {side}")))
            submit = gr.Button("Submit and continue", variant="primary")
        with gr.Column(visible=False) as done_box:
            gr.Markdown("### Thank you! You have rated every item. You can close this page.")
        message = gr.Markdown()

        answer_components = [preference, *[component for _, _, component in fields]]
        outputs = [participant, current, consent_box, item_box, done_box, progress, prompt, text_a, text_b]
        outputs += [*answer_components, message]

        def view(participant_id: str, item: dict[str, Any], note: str = "") -> list[Any]:
            done = bool(item.get("done"))
            texts = item.get("texts", ["", ""]) + [""]
            answered = item["position"] if done else item["position"] - 1
            return [
                participant_id,
                "" if done else item["item_id"],
                gr.update(visible=False),
                gr.update(visible=not done),
                gr.update(visible=done),
                f"**Item {item['position']} of {item['total']}** · {answered} answered",
                item.get("prompt", ""),
                texts[0],
                texts[1],
                *[gr.update(value=None) for _ in answer_components],
                note,
            ]

        def stay(note: str) -> list[Any]:
            return [gr.update() for _ in outputs[:-1]] + [f"⚠️ {note}"]

        def on_load(request: gr.Request) -> str:
            return str(request.query_params.get("participant", "")) if request else ""

        def on_start(participant_id: str, agreed: bool) -> list[Any]:
            participant_id = (participant_id or "").strip()
            if not agreed:
                return stay("Please tick the consent box to take part.")
            try:
                store.register(participant_id)
                return view(participant_id, store.current_item(participant_id))
            except StudyError as exc:
                return stay(str(exc))

        def on_submit(participant_id: str, item: str, choice: Any, *values: Any) -> list[Any]:
            answer: dict[str, Any] = {"preference": choice} if pairwise else {}
            for (question_id, side, _), value in zip(fields, values, strict=True):
                if side:
                    sides = answer.setdefault(question_id, {})
                    if value is not None:
                        sides[side] = value
                else:
                    answer[question_id] = value
            try:
                store.submit(participant_id, item, answer)
                return view(participant_id, store.current_item(participant_id))
            except (InvalidAnswer, ParticipantError) as exc:
                return stay(str(exc))  # keep what the participant has entered
            except AnswerError as exc:  # a stale tab or an edited id: show where this participant really is
                try:
                    return view(participant_id, store.current_item(participant_id), f"⚠️ {exc}")
                except StudyError:
                    return stay(str(exc))
            except StudyError as exc:
                return stay(str(exc))

        page.load(on_load, None, participant_box, api_visibility="private")
        hidden: Any = "undocumented"  # callable (tests drive the page's own handlers), not in the API docs
        start.click(on_start, [participant_box, agree], outputs, api_name="ui_start", api_visibility=hidden)
        submit.click(
            on_submit,
            [participant, current, *answer_components],
            outputs,
            api_name="ui_submit",
            api_visibility=hidden,
        )
        _add_api(store)
    return page


def _add_api(store: StudyStore) -> None:
    def study_start(participant_id: str, consent: bool) -> dict[str, Any]:
        """Record consent for a participant and return their current item."""
        if not consent:
            raise gr.Error("consent is required to take part; pass consent=true")
        try:
            store.register(participant_id)
            return store.current_item(participant_id)
        except StudyError as exc:
            raise gr.Error(str(exc), title=type(exc).__name__) from exc

    def study_item(participant_id: str) -> dict[str, Any]:
        """The participant's current item ({"done": true} when every item is answered)."""
        try:
            return store.current_item(participant_id)
        except StudyError as exc:
            raise gr.Error(str(exc), title=type(exc).__name__) from exc

    def study_submit(participant_id: str, item_id: str, answer_json: str) -> dict[str, Any]:
        """Commit one answer (idempotent for the same answer) and return the next item."""
        try:
            result = store.submit(participant_id, item_id, parse_answer_json(store.study, answer_json))
            return {
                "answer_id": result.answer_id,
                "position": result.position + 1,
                "duplicate": result.duplicate,
                "answered": result.answered,
                "total": result.total,
                "next": store.current_item(participant_id),
            }
        except StudyError as exc:
            raise gr.Error(str(exc), title=type(exc).__name__) from exc

    for fn in (study_start, study_item, study_submit):
        gr.api(fn, api_name=fn.__name__, concurrency_limit=PAGE_CONCURRENCY)  # type: ignore[attr-defined]


def launch_study_page(store: StudyStore, host: str, port: int, block: bool = True) -> gr.Blocks:
    """Serve the participant page; with `block=False` return once it is listening (tests)."""
    page = build_study_page(store)
    page.queue(default_concurrency_limit=PAGE_CONCURRENCY).launch(
        server_name=host, server_port=port, prevent_thread_lock=not block, quiet=not block, show_error=True
    )
    return page
