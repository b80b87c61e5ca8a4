"""Saved conversations: who owns them, and every message with how it was generated."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

from .owners import Owner

TITLE_MAX_LENGTH = 200


class Source(models.TextChoices):
    WEB = "web", "Web page"
    API = "api", "Seed HTTP API"
    WEBSOCKET = "websocket", "WebSocket"
    OPENAI = "openai", "OpenAI-compatible API"


class Role(models.TextChoices):
    SYSTEM = "system", "System"
    USER = "user", "User"
    ASSISTANT = "assistant", "Assistant"
    TOOL = "tool", "Tool result"


class FinishReason(models.TextChoices):
    GENERATING = "", "Generating"  # an assistant message still being written (or interrupted by a crash)
    STOP = "stop", "Stop"
    LENGTH = "length", "Length"
    CANCELLED = "cancelled", "Cancelled"
    ERROR = "error", "Error"


class ConversationQuerySet(models.QuerySet):
    def owned_by(self, owner: Owner) -> ConversationQuerySet:
        """The conversations `owner` may see; none for an owner with no identity."""
        if owner.user_id is not None:
            return self.filter(user_id=owner.user_id)
        if owner.visitor is not None:
            return self.filter(user=None, visitor=owner.visitor)
        if owner.api_key:
            return self.filter(user=None, visitor=None, api_key_name=owner.api_key)
        if owner.open_api:
            # Callers of an open API share the key-less API conversations, never a person's.
            # Their ids are random UUIDs: one must be told an id to use it.
            return self.filter(user=None, visitor=None, api_key_name="")
        return self.none()

    def adopt(self, visitor: uuid.UUID, user) -> int:
        """Give an anonymous visitor's conversations to the account they logged in to."""
        return self.filter(user=None, visitor=visitor).update(user=user, visitor=None)


class Conversation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Exactly one kind of owner at most: an account, an anonymous visitor (a UUID kept in the
    # session, since login rotates the session key), or an API key's name.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="conversations"
    )
    visitor = models.UUIDField(null=True, blank=True)
    api_key_name = models.CharField(max_length=100, blank=True, default="")
    title = models.CharField(max_length=TITLE_MAX_LENGTH, blank=True, default="")
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.WEB)
    model = models.CharField(max_length=200, blank=True, default="")
    system_prompt = models.TextField(blank=True, default="")
    # Per-conversation generation settings chosen in the page: temperature, top_p, max_length.
    settings = models.JSONField(default=dict, blank=True)
    # The conversation is a tree of messages; this is the leaf of the branch on screen (and the
    # branch the next question continues). Null for an empty conversation.
    current_leaf = models.ForeignKey(
        "Message", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ConversationQuerySet.as_manager()

    class Meta:
        ordering = ["-updated_at"]
        indexes = [
            models.Index(fields=["user", "-updated_at"], name="conv_user_recent"),
            models.Index(fields=["visitor", "-updated_at"], name="conv_visitor_recent"),
            models.Index(fields=["api_key_name", "-updated_at"], name="conv_apikey_recent"),
            models.Index(fields=["created_at"], name="conv_created"),
        ]
        constraints = [
            models.CheckConstraint(
                name="conv_single_owner",
                condition=~(Q(user__isnull=False) & Q(visitor__isnull=False)),
            )
        ]

    def __str__(self) -> str:
        return self.title or str(self.id)

    @property
    def owner_label(self) -> str:
        if self.user_id:
            return f"user:{self.user}"
        if self.visitor:
            return f"visitor:{str(self.visitor)[:8]}"
        if self.api_key_name:
            return f"key:{self.api_key_name}"
        return "-"


class Message(models.Model):
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    # The message this one follows (null: the root). Siblings are alternatives: an edited
    # question, a regenerated answer. `position` is the order of creation within the conversation.
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="children")
    position = models.PositiveIntegerField()
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    # Assistant messages only: how the answer ended and what it cost.
    finish_reason = models.CharField(max_length=16, choices=FinishReason.choices, blank=True, default="")
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    time_to_first_token = models.FloatField(null=True, blank=True, help_text="seconds")
    duration = models.FloatField(null=True, blank=True, help_text="seconds")
    params = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True, default="")
    # Assistant messages: how many of the oldest turns of the path were left out of the prompt.
    history_truncated = models.PositiveIntegerField(default=0)
    # Assistant messages: the tool calls of the answer, [{"id", "name", "arguments"}] (arguments:
    # JSON text). Tool messages: the id of the call whose result `content` is, and its function.
    tool_calls = models.JSONField(default=list, blank=True)
    tool_call_id = models.CharField(max_length=100, blank=True, default="")
    tool_name = models.CharField(max_length=64, blank=True, default="")

    class Meta:
        ordering = ["conversation", "position"]
        constraints = [
            models.UniqueConstraint(fields=["conversation", "position"], name="msg_unique_position"),
        ]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:60]}"

    # Set on an unsaved message that really starts a new root (an edited first question).
    explicit_root = False

    def save(self, *args, **kwargs):
        """A new message saved with no parent continues the conversation's current path (code
        that writes a linear conversation keeps working); the tree code names parents itself."""
        append = self._state.adding and self.parent_id is None and not self.explicit_root
        if append:
            conversation = Conversation.objects.filter(pk=self.conversation_id).values("current_leaf_id").first() or {}
            self.parent_id = conversation.get("current_leaf_id") or (
                Message.objects.filter(conversation_id=self.conversation_id).order_by("-position")
                .values_list("pk", flat=True).first()
            )
        super().save(*args, **kwargs)
        if append:
            Conversation.objects.filter(pk=self.conversation_id).update(current_leaf=self)

    @property
    def tokens_per_second(self) -> float | None:
        if not self.completion_tokens or not self.duration:
            return None
        generating = self.duration - (self.time_to_first_token or 0)
        return round(self.completion_tokens / generating, 2) if generating > 0 else None


from .invites import Invite  # noqa: E402,F401 - the invitations model (chat/invites.py)


def new_share_id() -> str:
    import secrets

    return secrets.token_urlsafe(24)  # 192 random bits: unguessable


class Share(models.Model):
    """A read-only link to a snapshot of a conversation's current path, as it was when shared.

    The snapshot is copied, so later turns, edits or a deleted branch do not change what the
    link shows; deleting the share (revoking) makes the link 404, and so does deleting the
    conversation."""

    id = models.CharField(primary_key=True, max_length=64, default=new_share_id, editable=False)
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="shares")
    title = models.CharField(max_length=TITLE_MAX_LENGTH, blank=True, default="")
    model = models.CharField(max_length=200, blank=True, default="")
    # [{"role", "content", "finish_reason"}], the path from the root, without the system prompt.
    messages = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.title or self.id
