"""Native ChatGLM tokenizers (v1 = ChatGLM-6B, v2 = ChatGLM2-6B, v3 = ChatGLM3-6B).

Built on the `sentencepiece` model file of the checkpoint; nothing from the checkpoint is
executed. The rules (pre-processing, code-added special ids, decode clean-up, prompt
formats) follow the reference remote code, as written down in tests/fixtures/chatglm/README.md.

One deliberate difference from the reference: user text is always encoded as text. The
reference v1 tokenizer (through transformers) cuts `<sop>`, `<eop>`, `[MASK]`... out of
user text and maps them to the control ids, which lets a user forge turn boundaries. Here
the special ids are only ever added by the prompt builders. (v1's *format* pieces `<n>`,
`<|tab|>` and `<|blank_N|>` stay matched: they are whitespace, not control tokens.)

Streaming: `stream_decoder()` returns a Decoder whose deltas are whole characters, concatenate
to exactly the final post-processed answer, and are never revised once sent (see
`TextRewrite` / `StripWhitespace` below).
"""

from __future__ import annotations

import abc
import functools
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from ..detokenize import IncrementalDetokenizer, piece_bytes
from ..vocabulary import ChatMessage

# --------------------------------------------------------------------------------------------
# Chat messages -> (history pairs, query), for the text-template families v1 and v2.
# --------------------------------------------------------------------------------------------


def split_turns(messages: Sequence[ChatMessage]) -> tuple[list[tuple[str, str]], str]:
    """Turn role/content messages into ChatGLM's `(history, query)`.

    * System messages are joined (blank line between them) and prepended to the first user
      message, separated by a blank line: v1 and v2 have no system role, and the first query
      is where the reference demos put instructions.
    * Consecutive messages of one role are joined with a newline.
    * An assistant message without a user message before it pairs with an empty question.
    * The query is the last user message when nothing follows it; otherwise it is empty
      (the model then answers an empty question after the full history).
    """
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system" and m["content"])
    turns: list[list[str]] = []  # [role, content] with runs of one role merged
    for message in messages:
        role = message["role"]
        if role == "system":
            continue
        if role not in ("user", "assistant"):
            raise ValueError(f"unknown chat role {role!r}")
        if turns and turns[-1][0] == role:
            turns[-1][1] += "\n" + message["content"]
        else:
            turns.append([role, message["content"]])
    if system:
        first_user = next((t for t in turns if t[0] == "user"), None)
        if first_user is None:
            turns.insert(0, ["user", system])
        else:
            first_user[1] = f"{system}\n\n{first_user[1]}"
    query = turns.pop()[1] if turns and turns[-1][0] == "user" else ""
    history: list[tuple[str, str]] = []
    pending_user: str | None = None
    for role, content in turns:
        if role == "user":
            pending_user = content
        else:
            history.append((pending_user or "", content))
            pending_user = None
    if pending_user is not None:  # a user turn left without an answer (only if query is "")
        history.append((pending_user, ""))
    return history, query


# --------------------------------------------------------------------------------------------
# Streaming text stages: exact, append-only versions of the reference's string rewrites.
# --------------------------------------------------------------------------------------------


class TextRewrite:
    """A streaming `pattern.sub(repl, text)` for a pattern whose matches are at most `max_len` long.

    Text is released once no match can still cover it: the last `max_len - 1` characters are
    held back (a match that starts before them ends inside the text we already have), and so
    is a match that straddles that point. Within the released part, the regex scan sees exactly
    what a scan of the whole text would see, so the concatenated output equals `sub` applied
    to the concatenated input, and nothing sent is ever rewritten. Patterns must not use
    look-around or anchors.
    """

    def __init__(self, pattern: str | re.Pattern[str], repl: str | Callable[[re.Match[str]], str], max_len: int):
        self.pattern = re.compile(pattern)
        self.repl = repl
        self.max_len = max_len
        self._pending = ""

    @classmethod
    def literal(cls, old: str, new: str) -> TextRewrite:
        """Streaming `str.replace(old, new)`."""
        return cls(re.escape(old), new.replace("\\", "\\\\"), len(old))

    def feed(self, text: str) -> str:
        self._pending += text
        cut = len(self._pending) - (self.max_len - 1)
        if cut <= 0:
            return ""
        for match in self.pattern.finditer(self._pending):
            if match.start() >= cut:
                break
            if match.end() > cut:
                cut = match.start()
                break
        out = self.pattern.sub(self.repl, self._pending[:cut])
        self._pending = self._pending[cut:]
        return out

    def flush(self) -> str:
        out = self.pattern.sub(self.repl, self._pending)
        self._pending = ""
        return out


class StripWhitespace:
    """Streaming `str.strip()`: drops leading whitespace, holds whitespace runs until text follows.

    Trailing whitespace is dropped at the end, as the reference's `response.strip()` does, so
    a client never receives spaces that the final answer does not have.
    """

    def __init__(self) -> None:
        self._started = False
        self._held = ""

    def feed(self, text: str) -> str:
        if not self._started:
            text = text.lstrip()
            if not text:
                return ""
            self._started = True
        text = self._held + text
        body = text.rstrip()
        self._held = text[len(body) :]
        return body

    def flush(self) -> str:
        self._held = ""
        return ""


class StreamDecoder:
    """Token ids -> whole-character text deltas, through a chain of streaming text stages.

    Satisfies the engine's Decoder protocol (`push`, `flush`).
    """

    def __init__(self, detokenizer: IncrementalDetokenizer, stages: Sequence[TextRewrite | StripWhitespace]):
        self._detokenizer = detokenizer
        self._stages = list(stages)

    def push(self, token_id: int) -> str:
        text = self._detokenizer.push(token_id)
        for stage in self._stages:
            if not text:
                break
            text = stage.feed(text)
        return text

    def flush(self) -> str:
        text = self._detokenizer.flush()
        for stage in self._stages:
            text = stage.feed(text) + stage.flush()
        return text


TRAINING_TIME = ("[[训练时间]]", "2023年")
CJK = "[\u4e00-\u9fff]"
# v1's process_response: ASCII punctuation next to a CJK ideograph becomes full-width, in
# this order (each rule first after, then before the ideograph).
V1_PUNCTUATION = ((",", "，"), ("!", "！"), (":", "："), (";", "；"), ("?", "？"))
# transformers' clean_up_tokenization, which the v1 tokenizer leaves on, in its order.
CLEANUP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
           (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def response_stages(family: str) -> list[TextRewrite | StripWhitespace]:
    """The reference's answer post-processing (`process_response`) as streaming stages."""
    stages: list[TextRewrite | StripWhitespace] = [StripWhitespace(), TextRewrite.literal(*TRAINING_TIME)]
    if family == "v1":
        for ascii_mark, full_width in V1_PUNCTUATION:
            mark = re.escape(ascii_mark)
            stages.append(TextRewrite(f"({CJK}){mark}", rf"\g<1>{full_width}", 2))
            stages.append(TextRewrite(f"{mark}({CJK})", rf"{full_width}\g<1>", 2))
    return stages


def postprocess_response(family: str, text: str) -> str:
    """The whole-text form of `response_stages`: the reference's `process_response`."""
    for stage in response_stages(family):
        text = stage.feed(text) + stage.flush()
    return text


# --------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------

# A byte-fallback piece: sentencepiece decodes it to that byte (v1 files do not mark them as
# byte pieces, but decode them alike).
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class ChatGLMTokenizer(abc.ABC):
    """Common surface of the three families. Thread-safe: sentencepiece calls are re-entrant."""

    family: str

    def __init__(self, model_file: str | Path):
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        self.num_pieces = self.sp.get_piece_size()

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of tokenizer ids: pieces plus code-added specials."""

    @property
    @abc.abstractmethod
    def eos_token_ids(self) -> frozenset[int]: ...

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Ids of plain text: never a special id, whatever the text spells."""

    @abc.abstractmethod
    def tokenize(self, text: str) -> list[str]:
        """Pieces of `encode(text)`."""

    @abc.abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """The reference `tokenizer.decode(ids)`."""

    @abc.abstractmethod
    def build_prompt(self, messages: Sequence[ChatMessage]) -> list[int]:
        """Prompt ids for chat messages, exactly as the reference `chat()` builds them."""

    def token_text(self, token_id: int) -> tuple[str, bytes]:
        """One token's text and exact bytes (its sentencepiece piece), for logprobs; a special
        or padding id has none."""
        if not 0 <= token_id < self.num_pieces or self.sp.is_control(token_id):
            return "", b""
        raw = piece_bytes(self.sp.id_to_piece(token_id), byte_level=False)
        return raw.decode("utf-8", errors="replace"), raw

    def _raw_decode(self, ids: list[int]) -> str:
        """Decode before the text-level rules that `stream_decoder` applies as stages."""
        return self.decode(ids)

    def _decode_stages(self) -> list[TextRewrite | StripWhitespace]:
        return []

    def stream_decoder(self) -> StreamDecoder:
        """A fresh incremental decoder for one answer: decode + response post-processing.

        The detokenizer gets no context ids: the reference decodes the answer ids on their
        own, so the first piece's leading space is dropped just as it is there.
        """
        return StreamDecoder(
            IncrementalDetokenizer(self._raw_decode),
            self._decode_stages() + response_stages(self.family),
        )

    def decode_response(self, ids: Iterable[int]) -> str:
        """The final answer text for generated ids (EOS excluded), as `stream_decoder` streams it."""
        decoder = self.stream_decoder()
        return "".join(decoder.push(i) for i in ids) + decoder.flush()

    def encode_continuation(self, text: str) -> list[int]:
        """Ids that spell exactly `text` as it continues other text (`token_bytes`' spelling),
        without the "▁" that sentencepiece puts before text of its own: a grammar engine
        tokenizes the parts a grammar forces with it, and takes their ids to spell those bytes.
        (Text that starts with whitespace too: " " is "▁▁" and "\n" is "▁" "\n" to encode().)"""
        ids = self.encode(text)
        spelled = self._spelling
        written = b"".join(spelled[i] or b"" for i in ids if i < len(spelled))
        if written == text.encode():
            return ids
        if ids and written == b" " + text.encode():
            first = self.sp.id_to_piece(ids[0])
            if first == "\u2581":
                return ids[1:]
            rest = self.sp.piece_to_id(first[1:])
            if rest != self.sp.unk_id():
                return [rest] + ids[1:]
        # The normalizer changed the text (v1's collapses runs of spaces): piece by character.
        return self._by_character(text) or ids

    def _by_character(self, text: str) -> list[int] | None:
        out = []
        for char in text:
            piece = self.sp.piece_to_id("\u2581" if char == " " else char)
            if piece != self.sp.unk_id() and not self.sp.is_control(piece):
                out.append(piece)
                continue
            pieces = [self.sp.piece_to_id(f"<0x{b:02X}>") for b in char.encode()]
            if self.sp.unk_id() in pieces:
                return None
            out += pieces
        return out

    @functools.cached_property
    def _spelling(self) -> list[bytes | None]:
        return self.token_bytes()

    def token_bytes(self) -> list[bytes | None]:
        """The UTF-8 bytes each id spells in an answer, for a grammar engine's vocabulary
        (constraints.py); None for an id that is no text (control pieces, specials). Byte
        pieces are their byte; `▁` is the space sentencepiece writes it for."""
        out: list[bytes | None] = []
        for i in range(self.vocab_size):
            if i >= self.num_pieces or self.sp.is_control(i) or self.sp.is_unknown(i):
                out.append(None)
                continue
            piece = self.sp.id_to_piece(i)
            byte = _BYTE_PIECE.fullmatch(piece)
            out.append(bytes([int(byte.group(1), 16)]) if byte else self._piece_text(piece).encode())
        return out

    def _piece_text(self, piece: str) -> str:
        return piece.replace("\u2581", " ")


class V1Tokenizer(ChatGLMTokenizer):
    """ChatGLM-6B: `ice_text.model`, newline/tab/blank-run pre-processing, control pieces in the file."""

    family = "v1"
    MAX_BLANK = 80
    _FORMAT_TOKENS = re.compile(r"<n>|<\|tab\|>|<\|blank_([2-9]|[1-7][0-9]|80)\|>")

    def __init__(self, model_file: str | Path):
        super().__init__(model_file)
        ids = {name: self.sp.piece_to_id(name) for name in ("[MASK]", "[gMASK]", "<sop>", "<eop>", "<pad>")}
        self.mask_id, self.gmask_id = ids["[MASK]"], ids["[gMASK]"]
        self.sop_id, self.eop_id, self.pad_id = ids["<sop>"], ids["<eop>"], ids["<pad>"]

    @property
    def vocab_size(self) -> int:
        return self.num_pieces

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return frozenset({self.eop_id})

    def _preprocess(self, text: str) -> str:
        text = text.replace("\n", "<n>").replace("\t", "<|tab|>")
        for n in range(self.MAX_BLANK, 1, -1):
            text = text.replace(" " * n, f"<|blank_{n}|>")
        return text

    def encode(self, text: str) -> list[int]:
        # Control pieces (<sop>, [MASK]...) are never produced by sentencepiece's encoder.
        return self.sp.encode(self._preprocess(text))

    def tokenize(self, text: str) -> list[str]:
        return self.sp.encode(self._preprocess(text), out_type=str)

    def _raw_decode(self, ids: list[int]) -> str:
        """Sentencepiece decode without `<pad>` and ids past the tokenizer (padded model vocab)."""
        return self.sp.decode([i for i in ids if i != self.pad_id and 0 <= i < self.num_pieces])

    @classmethod
    def _format_and_cleanup(cls, text: str) -> str:
        text = cls._FORMAT_TOKENS.sub(cls._format_replacement, text)
        for old, new in CLEANUP:
            text = text.replace(old, new)
        return text

    @staticmethod
    def _format_replacement(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "<n>":
            return "\n"
        if token == "<|tab|>":
            return "\t"
        return " " * int(match.group(1))

    def decode(self, ids: Iterable[int]) -> str:
        return self._format_and_cleanup(self._raw_decode(list(ids)))

    def _piece_text(self, piece: str) -> str:
        return self._FORMAT_TOKENS.sub(self._format_replacement, super()._piece_text(piece))

    def _decode_stages(self) -> list[TextRewrite | StripWhitespace]:
        # Format tokens never overlap (each is "<...>" without inner brackets), so one regex
        # equals the reference's sequence of replaces.
        stages: list[TextRewrite | StripWhitespace] = [
            TextRewrite(self._FORMAT_TOKENS, self._format_replacement, len("<|blank_80|>"))
        ]
        stages += [TextRewrite.literal(old, new) for old, new in CLEANUP]
        return stages

    def build_prompt(self, messages: Sequence[ChatMessage]) -> list[int]:
        history, query = split_turns(messages)
        if history:
            prompt = "".join(f"[Round {i}]\n问：{q}\n答：{a}\n" for i, (q, a) in enumerate(history))
            prompt += f"[Round {len(history)}]\n问：{query}\n答："
        else:
            prompt = query
        return self.encode(prompt) + [self.gmask_id, self.sop_id]


class V2Tokenizer(ChatGLMTokenizer):
    """ChatGLM2-6B: plain sentencepiece, five specials added after the last piece."""

    family = "v2"
    SPECIALS: tuple[str, ...] = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop")

    def __init__(self, model_file: str | Path):
        super().__init__(model_file)
        self.special_ids = {name: self.num_pieces + i for i, name in enumerate(self.SPECIALS)}
        self.special_names = {i: name for name, i in self.special_ids.items()}
        self.gmask_id, self.sop_id = self.special_ids["[gMASK]"], self.special_ids["sop"]
        self.eos_id = self.sp.eos_id()  # </s> = 2

    @property
    def vocab_size(self) -> int:
        return self.num_pieces + len(self.SPECIALS)

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return frozenset({self.eos_id})

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def tokenize(self, text: str) -> list[str]:
        return self.sp.encode(text, out_type=str)

    def _pieces(self, ids: Iterable[int]) -> list[str]:
        """Pieces to decode: <unk>/<s>/</s> and specials contribute nothing (v3 overrides specials)."""
        return [self.sp.id_to_piece(i) for i in ids if 3 <= i < self.num_pieces]

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode_pieces(self._pieces(ids))

    def build_prompt(self, messages: Sequence[ChatMessage]) -> list[int]:
        history, query = split_turns(messages)
        prompt = "".join(f"[Round {i}]\n\n问：{q}\n\n答：{a}\n\n" for i, (q, a) in enumerate(history, 1))
        prompt += f"[Round {len(history) + 1}]\n\n问：{query}\n\n答："
        return [self.gmask_id, self.sop_id] + self.encode(prompt)


class V3Tokenizer(V2Tokenizer):
    """ChatGLM3-6B: v2 plus role tokens; prompts are assembled from ids, one message at a time."""

    family = "v3"
    SPECIALS = V2Tokenizer.SPECIALS + ("<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")
    ROLES = ("system", "user", "assistant", "observation")

    @property
    def eos_token_ids(self) -> frozenset[int]:
        # A generated <|user|> or <|observation|> means the model has finished its turn.
        return frozenset({self.eos_id, self.special_ids["<|user|>"], self.special_ids["<|observation|>"]})

    def _pieces(self, ids: Iterable[int]) -> list[str]:
        """Specials decode to their literal names; sentencepiece passes unknown names through."""
        pieces = []
        for i in ids:
            if 3 <= i < self.num_pieces:
                pieces.append(self.sp.id_to_piece(i))
            elif i in self.special_names:
                pieces.append(self.special_names[i])
        return pieces

    def role_id(self, role: str) -> int:
        return self.special_ids[f"<|{role}|>"]

    def build_prompt(self, messages: Sequence[ChatMessage]) -> list[int]:
        """`[gMASK] sop`, then per message: role token, encode(f"{metadata}\\n"), encode(content).

        A trailing `<|assistant|>` asks for the answer. Unlike v1/v2, the messages are used as
        they are, system messages included (`<|system|>`).
        """
        ids = [self.gmask_id, self.sop_id]
        newline = self.encode("\n")
        for message in messages:
            if message["role"] not in self.ROLES:
                raise ValueError(f"unknown chat role {message['role']!r}")
            # The header line's metadata (a called function's name) is encoded with its newline,
            # as the reference's build_single_message does.
            metadata = message.get("metadata") or ""
            header = self.encode(f"{metadata}\n") if metadata else newline
            ids += [self.role_id(message["role"])] + header + self.encode(message["content"])
        return ids + [self.role_id("assistant")]


TOKENIZER_FILES = {"v1": "ice_text.model", "v2": "tokenizer.model", "v3": "tokenizer.model"}
TOKENIZERS: dict[str, type[ChatGLMTokenizer]] = {"v1": V1Tokenizer, "v2": V2Tokenizer, "v3": V3Tokenizer}


def load_tokenizer(checkpoint_dir: str | Path, family: str) -> ChatGLMTokenizer:
    path = Path(checkpoint_dir) / TOKENIZER_FILES[family]
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    return TOKENIZERS[family](path)
