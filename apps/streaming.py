"""Stream a model's reply while `generate` runs in a worker thread."""

import threading
from collections.abc import Iterator


def stream_reply(model, processor, messages: list[dict], max_new_tokens: int) -> Iterator[str]:
    """Yield the text chunks of the assistant's reply to `messages` (chat-template conversation) as they are
    generated; an error in `generate` is raised here once the stream ends. The chunks may end with the reference
    terminator `"\\n###"`; `visible_reply` cuts it."""
    from transformers import TextIteratorStreamer

    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    ).to(model.device)
    streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    failures = []

    def generate() -> None:
        try:
            model.generate(**inputs, max_new_tokens=max_new_tokens, streamer=streamer)
        except Exception as error:  # raised again below, in the caller's thread
            failures.append(error)
            streamer.end()  # otherwise the consumer waits forever for the next chunk

    worker = threading.Thread(target=generate)
    worker.start()
    yield from streamer
    worker.join()
    if failures:
        raise failures[0]


def visible_reply(text: str, stop_string: str, final: bool = False) -> str:
    """The part of a streamed reply to show: up to the terminator, holding back a tail that could start it."""
    end = text.find(stop_string)
    if end >= 0:
        return text[:end]
    if final:
        return text
    for keep in range(len(stop_string) - 1, 0, -1):
        if text.endswith(stop_string[:keep]):
            return text[:-keep]
    return text
