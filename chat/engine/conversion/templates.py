"""Chat templates written into the GGUF (`tokenizer.chat_template`) for ChatGLM2 and ChatGLM3.

llama.cpp renders them (Jinja) and tokenizes the result with special tokens parsed; both must give
exactly the ids the reference `chat()` builds (see `chat/engine/networks/chatglm_tokenizer.py`).

* How llama.cpp tokenizes: special-token texts are cut out first; every run of plain text that
  follows a special token gets sentencepiece's dummy-prefix space. So `<|user|>` + "\\n hi" gives
  [<|user|>, ▁, <0x0A>, ▁hi] = role id + encode("\\n") + encode("hi"), the reference's ChatGLM3
  layout (each part encoded on its own, each with its dummy prefix). No piece holds a newline, so
  tokenizing "\\n hi" in one go cannot merge across the parts.
* ChatGLM2's prompt is one text after `[gMASK]<sop>`, encoded in one call: the same here.
* System messages: ChatGLM3 has a `<|system|>` role; ChatGLM2 has none, so (as the native
  backend does) system text goes in front of the next user message, separated by a blank line.

An empty message content writes nothing after the role's newline, as the reference encodes ""
to no ids.
"""

from __future__ import annotations

CHATGLM3 = (
    "[gMASK]<sop>"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n"
    "{% if message['content'] %} {{ message['content'] }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

CHATGLM2 = (
    "{% set ns = namespace(round=1, system='') %}"
    "[gMASK]<sop>"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{% set ns.system = ns.system + ('\\n\\n' if ns.system else '') + message['content'] %}"
    "{% elif message['role'] == 'user' %}"
    "[Round {{ ns.round }}]\n\n问：{{ ns.system + '\\n\\n' if ns.system else '' }}{{ message['content'] }}\n\n答："
    "{% set ns.system = '' %}"
    "{% else %}"
    "{{ message['content'] }}\n\n"
    "{% set ns.round = ns.round + 1 %}"
    "{% endif %}"
    "{% endfor %}"
)

TEMPLATES = {"chatglm2": CHATGLM2, "chatglm3": CHATGLM3}
