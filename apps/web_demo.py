"""The Gradio web demo (`sphinx-x demo`, or a Space through `apps/app.py`): upload an image, chat about it with
streamed answers, and see the boxes, points and SAM masks of each answer drawn beside the chat."""

import functools
import os


# Offline start: no usage analytics or version check. Set before gradio is imported, which reads it then.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from ..processors.image_processing_sphinx_x import to_rgb  # noqa: E402
from ..processors.processing_sphinx_x import STOP_STRING  # noqa: E402
from .ground import ground_answer  # noqa: E402
from .streaming import stream_reply, visible_reply  # noqa: E402


# The prompts of the reference demo (spec 9.5).
EXAMPLE_PROMPTS = [
    "What's in the image?",
    "Generate a detailed description about the image.",
    "Provide a one-sentence caption for the provided image.",
    "Please provide the bounding box coordinate of the region this sentence describes: the red circle.",
    "Describe the image concisely. Include the bounding box for each mentioned object.",
    "Detect all people shown in the image.",
    "Detect the key points of the person in the region [0.10,0.10,0.90,0.90].",
    "Please detect all texts and provide their bounding box coordinate.",
    "Convert this chart to a table.",
]


def respond(model, processor, segmenter, max_new_tokens: int, question: str, image, chat: list, messages: list):
    """One chat turn, as a generator of Gradio updates `(chat, annotated image, messages, boxes, question box)`: the
    answer grows in the last chat bubble while it streams, then its boxes are drawn on the image. `messages` is the
    SPHINX conversation (the image rides in its first user turn)."""
    question = (question or "").strip()
    if not question:
        yield chat, gr.skip(), messages, gr.skip(), question
        return
    image = to_rgb(image) if image is not None else None
    content = [{"type": "image", "image": image}] if image is not None and not messages else []
    messages = messages + [{"role": "user", "content": content + [{"type": "text", "text": question}]}]
    chat = chat + [{"role": "user", "content": question}, {"role": "assistant", "content": ""}]
    yield chat, gr.skip(), messages, gr.skip(), ""
    text = ""
    for chunk in stream_reply(model, processor, messages, max_new_tokens):
        shown, text = visible_reply(text, STOP_STRING), text + chunk
        if visible_reply(text, STOP_STRING) != shown:
            chat = chat[:-1] + [{"role": "assistant", "content": visible_reply(text, STOP_STRING)}]
            yield chat, gr.skip(), messages, gr.skip(), ""
    reply = processor.strip_stop_string(text).strip()
    chat = chat[:-1] + [{"role": "assistant", "content": reply}]
    messages = messages + [{"role": "assistant", "content": [{"type": "text", "text": reply}]}]
    if image is None:
        yield chat, None, messages, [], ""
        return
    record, annotated = ground_answer(processor, reply, image, segmenter)
    boxes = [{key: item[key] for key in ("phrase", "box", "score")} for item in record["objects"]]
    yield chat, annotated, messages, boxes + record["points"], ""


def build_demo(model, processor, segmenter=None, max_new_tokens: int = 256) -> gr.Blocks:
    """The app: image upload and the annotated answer on the left, the multi-turn chat on the right.

    A new image starts a new conversation (SPHINX sees one image, in the first turn). `segmenter` (`BoxSegmenter`)
    adds a SAM mask per box.
    """

    def reset():
        return [], None, [], []

    with gr.Blocks(title="SPHINX-X", analytics_enabled=False) as demo:
        gr.Markdown("## SPHINX-X: ask about an image; boxes and points in the answer are drawn on it")
        messages = gr.State([])
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(type="pil", label="Image", elem_id="image", height=320)
                annotated = gr.Image(type="pil", label="Boxes and masks", elem_id="annotated", interactive=False,
                                     height=320)
                boxes = gr.JSON(label="Boxes (pixels)", elem_id="boxes")
            with gr.Column(scale=1):
                chat = gr.Chatbot(label="Chat", elem_id="chat", height=480)
                question = gr.Textbox(show_label=False, placeholder="Ask about the image", elem_id="question")
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    clear = gr.Button("New conversation", elem_id="clear")
                gr.Examples(EXAMPLE_PROMPTS, inputs=question, label="Prompts of the SPHINX demo")
        outputs = [chat, annotated, messages, boxes, question]
        turn = functools.partial(respond, model, processor, segmenter, max_new_tokens)
        question.submit(turn, [question, image, chat, messages], outputs)
        send.click(turn, [question, image, chat, messages], outputs)
        clear.click(reset, None, [chat, annotated, messages, boxes])
        image.change(reset, None, [chat, annotated, messages, boxes])
    return demo


def launch(model, processor, sam: str | None = None, port: int | None = None, host: str | None = None,
           max_new_tokens: int = 256) -> None:
    """Serve the demo until interrupted; `port` / `host` None use Gradio's defaults and its `GRADIO_SERVER_PORT` /
    `GRADIO_SERVER_NAME` (set by Hugging Face Spaces). Never opens a public share link."""
    segmenter = None
    if sam:
        from .segment import BoxSegmenter

        segmenter = BoxSegmenter(sam, device=str(model.device))
    demo = build_demo(model, processor, segmenter, max_new_tokens)
    demo.queue().launch(server_name=host, server_port=port, share=False, footer_links=[])
