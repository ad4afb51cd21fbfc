"""A web demo for any model of the zoo: ``mmzoo serve EXPORT`` or :func:`serve` from Python.

    >>> from zoo.serve import build_app, serve
    >>> serve("runs/vqa-shapes/export")                     # blocks; prints the URL to open
    >>> app = build_app("runs/caption/export")             # a gradio.Blocks, to launch or mount yourself

:func:`build_app` loads the model once (an export folder, a run folder or checkpoint, a registered name, or a built
model: what :func:`zoo.pipeline` takes), builds the :func:`zoo.pipeline` of its task and lays out a page for it. The
page calls the same pipeline a Python user would, so what it shows is exactly what
``zoo.pipeline(task, model)(...)`` returns. Pages:

- ``vqa``: an image and a question → the answer and its probability (a generative head ranks the answer list the
  model carries, or the answers typed in the optional answer-list box, one per line);
- ``captioning``: an image → its caption;
- ``retrieval``: an image and candidate texts, one per line → the texts ranked best first, with their scores;
- ``ve``: an image and a hypothesis → entailment / neutral / contradiction probabilities;
- ``nlvr``: two images and a statement → true / false probabilities;
- ``chat`` (a model with a ``chat`` method): an optional image and a message → the reply, the conversation so far
  kept as history (``clear`` starts a new one).

Without ``task``, the page follows the model: the task it was built or fine-tuned for (its ``zoo_config["task"]``);
a model built without one gets ``chat`` when it can chat, else the first of ``vqa``, ``captioning``, ``retrieval``,
``ve``, ``nlvr`` it supports (:func:`zoo.tasks.supported_tasks`).

Every input and output has a stable HTML id (``elem_id``): ``image`` (``left`` / ``right`` for nlvr), ``question``,
``answers``, ``texts``, ``hypothesis``, ``statement``, ``message``, ``submit``, ``clear``, ``answer``, ``prob``,
``caption``, ``ranking``, ``label``, ``chatbot``, and ``title`` for the page heading. A bad input (no image, an
unreadable file, no texts to rank, ...) is shown as an error message on the page, not as a traceback.

gradio is an optional dependency (the ``demo`` extra): it is imported only when a page is built, so importing
:mod:`zoo` never imports it.
"""

from __future__ import annotations

import functools
import html
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import gradio

__all__ = ["DEMO_TASKS", "build_app", "infer_task", "serve"]

DEMO_TASKS = ("vqa", "captioning", "retrieval", "ve", "nlvr", "chat")
_AUTO_ORDER = ("vqa", "captioning", "retrieval", "ve", "nlvr")
_log = logging.getLogger(__name__)


def _gradio() -> Any:
    try:
        import gradio
    except ImportError as exc:
        raise ImportError("the web demo needs gradio, which is not installed: pip install 'mmzoo[demo]'") from exc
    return gradio


def infer_task(model: Any) -> str:
    """The demo page a built model gets when no task is named (see the module docstring)."""
    from zoo.tasks import supported_tasks

    declared = (getattr(model, "zoo_config", None) or {}).get("task")
    if declared in DEMO_TASKS:
        return declared
    if hasattr(model, "chat"):
        return "chat"
    supported = supported_tasks(model)
    for task in _AUTO_ORDER:
        if task in supported:
            return task
    raise ValueError(f"{type(model).__name__} (task {declared!r}) does none of the tasks a demo page exists for "
                     f"({', '.join(DEMO_TASKS)}); it does: {', '.join(supported) or 'nothing'}")


def _guarded(gr: Any, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with the errors a bad input raises turned into a gradio error message."""

    @functools.wraps(fn)
    def run(*args: Any) -> Any:
        try:
            return fn(*args)
        except gr.Error:
            raise
        except (ValueError, TypeError, KeyError, OSError) as exc:
            raise gr.Error(html.escape(str(exc) or type(exc).__name__), print_exception=False) from None
        except Exception as exc:  # noqa: BLE001 - a failure inside the model: a message here, the traceback in the log
            _log.exception("the demo's %s call failed", fn.__name__)
            raise gr.Error(html.escape(f"{type(exc).__name__}: {exc}"), print_exception=False) from None

    return run


def _need_image(image: Any, what: str = "an image") -> Any:
    if image is None:
        raise ValueError(f"upload {what} first")
    return image


def _lines(text: str | None) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def _vqa_page(gr: Any, pipe: Any) -> None:
    model = pipe.model
    ranks_list = getattr(model, "generative_vqa", False) and not getattr(model, "open_ended_vqa", False)
    with gr.Row():
        with gr.Column():
            image = gr.Image(type="pil", label="image", elem_id="image", sources=["upload", "clipboard"])
            question = gr.Textbox(label="question", elem_id="question", placeholder="what colour is the circle?")
            inputs = [image, question]
            if ranks_list:
                carried = len((getattr(model, "zoo_config", None) or {}).get("answers") or [])
                inputs.append(gr.Textbox(label=f"answer list, one per line (empty: the model's own, {carried})",
                                         elem_id="answers", lines=3))
            submit = gr.Button("Answer", variant="primary", elem_id="submit")
        with gr.Column():
            answer = gr.Textbox(label="answer", elem_id="answer", interactive=False)
            prob = gr.Number(label="probability", elem_id="prob", interactive=False, precision=4)

    def answer_question(img: Any, q: str, answers: str = "") -> tuple[str, float]:
        if not (q or "").strip():
            raise ValueError("type a question first")
        res = pipe(_need_image(img), q, answers=_lines(answers) or None)
        return res["answer"], res["prob"]

    gr.on([submit.click, question.submit], _guarded(gr, answer_question), inputs, [answer, prob])


def _captioning_page(gr: Any, pipe: Any) -> None:
    with gr.Row():
        with gr.Column():
            image = gr.Image(type="pil", label="image", elem_id="image", sources=["upload", "clipboard"])
            submit = gr.Button("Caption", variant="primary", elem_id="submit")
        with gr.Column():
            caption = gr.Textbox(label="caption", elem_id="caption", interactive=False)

    def caption_image(img: Any) -> str:
        return pipe(_need_image(img))["caption"]

    submit.click(_guarded(gr, caption_image), [image], [caption])


def _retrieval_page(gr: Any, pipe: Any) -> None:
    with gr.Row():
        with gr.Column():
            image = gr.Image(type="pil", label="image", elem_id="image", sources=["upload", "clipboard"])
            texts = gr.Textbox(label="texts, one per line", elem_id="texts", lines=5,
                               placeholder="a red circle\na blue square")
            submit = gr.Button("Rank", variant="primary", elem_id="submit")
        with gr.Column():
            ranking = gr.Dataframe(headers=["rank", "text", "score"], label="ranking, best first",
                                   elem_id="ranking", interactive=False)

    def rank_texts(img: Any, text: str) -> list[list[Any]]:
        res = pipe(_need_image(img), _lines(text))
        return [[i + 1, t, round(s, 4)] for i, (t, s) in enumerate(res["ranking"])]

    submit.click(_guarded(gr, rank_texts), [image, texts], [ranking])


def _ve_page(gr: Any, pipe: Any) -> None:
    with gr.Row():
        with gr.Column():
            image = gr.Image(type="pil", label="premise image", elem_id="image", sources=["upload", "clipboard"])
            hypothesis = gr.Textbox(label="hypothesis", elem_id="hypothesis")
            submit = gr.Button("Judge", variant="primary", elem_id="submit")
        with gr.Column():
            label = gr.Label(label="entailment", elem_id="label")

    def judge(img: Any, hyp: str) -> dict[str, float]:
        if not (hyp or "").strip():
            raise ValueError("type a hypothesis first")
        return pipe(_need_image(img), hyp)["probs"]

    gr.on([submit.click, hypothesis.submit], _guarded(gr, judge), [image, hypothesis], [label])


def _nlvr_page(gr: Any, pipe: Any) -> None:
    with gr.Row():
        left = gr.Image(type="pil", label="left image", elem_id="left", sources=["upload", "clipboard"])
        right = gr.Image(type="pil", label="right image", elem_id="right", sources=["upload", "clipboard"])
    statement = gr.Textbox(label="statement about the pair", elem_id="statement")
    submit = gr.Button("Judge", variant="primary", elem_id="submit")
    label = gr.Label(label="is the statement true?", elem_id="label")

    def judge(a: Any, b: Any, text: str) -> dict[str, float]:
        if not (text or "").strip():
            raise ValueError("type a statement first")
        p = pipe(_need_image(a, "the left image"), _need_image(b, "the right image"), text)["prob"]
        return {"true": p, "false": 1.0 - p}

    gr.on([submit.click, statement.submit], _guarded(gr, judge), [left, right, statement], [label])


def _chat_page(gr: Any, pipe: Any) -> None:
    with gr.Row():
        with gr.Column(scale=1):
            image = gr.Image(type="pil", label="image (optional)", elem_id="image", sources=["upload", "clipboard"])
        with gr.Column(scale=2):
            chatbot = gr.Chatbot(label="conversation", elem_id="chatbot", height=360)
            message = gr.Textbox(label="message", elem_id="message", placeholder="what is in the picture?")
            with gr.Row():
                submit = gr.Button("Send", variant="primary", elem_id="submit")
                clear = gr.Button("Clear", elem_id="clear")
    history = gr.State([])

    def reply(img: Any, text: str, turns: list) -> tuple[list, list, str]:
        if not (text or "").strip():
            raise ValueError("type a message first")
        answer = pipe(img, text, history=[tuple(t) for t in turns])["answer"]
        turns = [*turns, [text, answer]]
        shown = [{"role": role, "content": c} for q, a in turns for role, c in (("user", q), ("assistant", a))]
        return shown, turns, ""

    gr.on([submit.click, message.submit], _guarded(gr, reply), [image, message, history],
          [chatbot, history, message])
    clear.click(lambda: ([], [], ""), None, [chatbot, history, message])


_PAGES = {"vqa": _vqa_page, "captioning": _captioning_page, "retrieval": _retrieval_page, "ve": _ve_page,
          "nlvr": _nlvr_page, "chat": _chat_page}
_BLURB = {"vqa": "Upload an image and ask a question about it.", "captioning": "Upload an image to caption it.",
          "retrieval": "Upload an image and list candidate texts, one per line: they come back ranked.",
          "ve": "Upload an image and write a hypothesis: does the image entail it?",
          "nlvr": "Upload two images and write a statement about the pair: is it true?",
          "chat": "Talk about an image (optional): the conversation so far is kept."}


def build_app(model_or_path: Any, task: str | None = None, **pipeline_kwargs: Any) -> gradio.Blocks:
    """The demo page of a model (an export folder, a run folder or checkpoint, a registered name or a built model)
    for ``task`` (default: the model's own, :func:`infer_task`). ``pipeline_kwargs`` go to :func:`zoo.pipeline`
    (``batch_size``, ``num_frames``, ``trust_imports``). The returned :class:`gradio.Blocks` carries the task it
    shows as ``zoo_task`` and the pipeline as ``zoo_pipeline``."""
    gr = _gradio()
    import zoo
    from zoo.pipelines import _load_model

    if task is not None and task not in DEMO_TASKS:
        raise ValueError(f"no demo page for task {task!r}; expected one of {', '.join(DEMO_TASKS)}")
    model = _load_model(model_or_path, bool(pipeline_kwargs.get("trust_imports", False)))
    task = task or infer_task(model)
    pipe = zoo.pipeline(task, model, **pipeline_kwargs)
    config = getattr(pipe.model, "zoo_config", None) or {}
    name = config.get("name") or type(pipe.model).__name__
    with gr.Blocks(title=f"mmzoo · {name} · {task}", analytics_enabled=False) as app:
        gr.Markdown(f"## {html.escape(str(name))} — {task}\n\n{_BLURB[task]}", elem_id="title")
        _PAGES[task](gr, pipe)
    app.zoo_task = task
    app.zoo_pipeline = pipe
    return app


def serve(model_or_path: Any, task: str | None = None, host: str = "127.0.0.1", port: int = 7860,
          share: bool = False, **pipeline_kwargs: Any) -> None:
    """Build the demo page (:func:`build_app`) and serve it on ``host:port`` until interrupted (Ctrl-C), printing
    its URL; ``share`` also asks gradio for a temporary public link."""
    app = build_app(model_or_path, task, **pipeline_kwargs)
    app.queue()
    app.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=True, quiet=True,
               ssr_mode=False)
    print(f"mmzoo serve: the {app.zoo_task} demo is running at {app.local_url}", flush=True)
    if share and getattr(app, "share_url", None):
        print(f"mmzoo serve: public link {app.share_url}", flush=True)
    print("mmzoo serve: press Ctrl-C to stop", flush=True)
    try:
        app.block_thread()
    finally:
        app.close(verbose=False)
