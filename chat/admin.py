"""Inspection of saved conversations: who, which model, how many messages and tokens, when.

The changelist's numbers come from one annotated query (no query per row); messages are
read-only here: the record of what was generated is not edited after the fact.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib import admin, messages
from django.db.models import Count, Max, Q, Sum
from django.http import HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.text import Truncator

from . import exports, selectors, tree
from .models import Conversation, Invite, Message


class OwnerKindFilter(admin.SimpleListFilter):
    title = "owner kind"
    parameter_name = "owner"

    KINDS = {
        "user": Q(user__isnull=False),
        "anonymous": Q(user__isnull=True, visitor__isnull=False),
        "api_key": Q(user__isnull=True, visitor__isnull=True) & ~Q(api_key_name=""),
        "none": Q(user__isnull=True, visitor__isnull=True, api_key_name=""),
    }

    def lookups(self, request, model_admin):
        return [("user", "Account"), ("anonymous", "Anonymous visitor"), ("api_key", "API key"), ("none", "None (open API)")]

    def queryset(self, request, queryset):
        condition = self.KINDS.get(self.value())
        return queryset.filter(condition) if condition is not None else queryset


def budgeted_changelist(model_admin, changelist_view, request, extra_context):
    """A search of message text runs within CHATGLM_ADMIN_SEARCH_SECONDS; past it, the database
    stops it and the page says so (and lists nothing)."""
    budget = settings.CHATGLM["ADMIN_SEARCH_SECONDS"]
    try:
        with selectors.time_budget(budget):
            response = changelist_view(request, extra_context)
            if hasattr(response, "render"):
                response.render()  # the queries run while rendering: inside the budget
        return response
    except selectors.QueryTooSlow:
        model_admin.message_user(request, f"The search of message text took longer than {budget:g} s and was "
                                 "stopped: narrow it with the filters, or search titles only.", messages.ERROR)
        return HttpResponseRedirect(request.path)


class SearchScopeFilter(admin.SimpleListFilter):
    """What the search box searches: titles (default), or also every message's text, which
    reads every message row (no index can serve a substring search): minutes on a large
    database, so only when asked for."""

    title = "search in"
    parameter_name = "search_in"

    def lookups(self, request, model_admin):
        return [("messages", "Titles and message text (slow)")]

    def queryset(self, request, queryset):
        return queryset  # the scope is read by ConversationAdmin.get_search_fields


class MessageInline(admin.TabularInline):
    model = Message
    # Every branch, in the order written; `parent` shows the tree (the current path is above).
    fields = readonly_fields = (
        "message_id", "parent_id", "position", "role", "content", "tool_calls", "tool_call_id", "tool_name",
        "finish_reason", "prompt_tokens", "completion_tokens", "time_to_first_token", "duration", "error", "created_at",
    )
    extra = 0
    can_delete = False
    show_change_link = True
    ordering = ("position",)

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="id")
    def message_id(self, obj):
        return obj.pk

    @admin.display(description="parent")
    def parent_id(self, obj):
        return obj.parent_id or "-"


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = (
        "display_title", "owner", "source", "model", "message_count", "prompt_tokens", "completion_tokens",
        "last_message_at", "updated_at",
    )
    list_select_related = ("user",)
    list_filter = ("source", "model", OwnerKindFilter, "created_at", SearchScopeFilter)
    search_fields = ("title",)
    date_hierarchy = "created_at"
    ordering = ("-updated_at",)
    list_per_page = 50
    readonly_fields = ("id", "user", "visitor", "api_key_name", "source", "model", "created_at", "updated_at",
                       "current_path")
    fields = ("id", "title", "user", "visitor", "api_key_name", "source", "model", "system_prompt", "settings",
              "created_at", "updated_at", "current_path")
    inlines = (MessageInline,)
    actions = ("export_as_json",)

    def get_search_fields(self, request):
        if request.GET.get(SearchScopeFilter.parameter_name) == "messages":
            return ("title", "messages__content")
        return self.search_fields

    def changelist_view(self, request, extra_context=None):
        if request.GET.get(SearchScopeFilter.parameter_name) != "messages" or not request.GET.get("q"):
            return super().changelist_view(request, extra_context)
        return budgeted_changelist(self, super().changelist_view, request, extra_context)

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(
            message_count=Count("messages"),
            prompt_tokens=Sum("messages__prompt_tokens"),
            completion_tokens=Sum("messages__completion_tokens"),
            last_message_at=Max("messages__created_at"),
        )

    def get_deleted_objects(self, objs, request):
        # Messages are read-only on their own, but they go with their conversation.
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        perms_needed.discard(Message._meta.verbose_name)
        return deleted, counts, perms_needed, protected

    @admin.display(description="current path")
    def current_path(self, obj):
        """The branch on screen, root first; the messages below hold every branch."""
        path = tree.current_path(obj)
        if not path:
            return "-"
        return format_html("<ol>{}</ol>", format_html_join(
            "", "<li>#{} {}: {}</li>", ((m.pk, m.get_role_display(), Truncator(m.content).chars(200)) for m in path)))

    @admin.display(description="title", ordering="title")
    def display_title(self, obj):
        return obj.title or "(untitled)"

    @admin.display(description="owner")
    def owner(self, obj):
        return obj.owner_label

    @admin.display(description="messages", ordering="message_count")
    def message_count(self, obj):
        return obj.message_count

    @admin.display(description="prompt tokens", ordering="prompt_tokens")
    def prompt_tokens(self, obj):
        return obj.prompt_tokens or 0

    @admin.display(description="completion tokens", ordering="completion_tokens")
    def completion_tokens(self, obj):
        return obj.completion_tokens or 0

    @admin.display(description="last message", ordering="last_message_at")
    def last_message_at(self, obj):
        return obj.last_message_at

    @admin.action(description="Export selected as JSON")
    def export_as_json(self, request, queryset):
        conversations = selectors.conversations_for_export(Conversation.objects.filter(pk__in=queryset.values("pk")))
        response = HttpResponse(exports.conversations_json(conversations), content_type="application/json; charset=utf-8")
        name = f"conversations-{timezone.now():%Y%m%d-%H%M%S}.json"
        response["Content-Disposition"] = exports.attachment_header(name)
        return response


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    """Read-only: find a message by its content, see how it was generated."""

    list_display = ("short_content", "conversation", "position", "role", "finish_reason", "completion_tokens",
                    "created_at")
    list_select_related = ("conversation",)
    list_filter = ("role", "finish_reason")
    search_fields = ("content",)
    raw_id_fields = ("conversation",)
    ordering = ("-created_at",)
    list_per_page = 100

    def changelist_view(self, request, extra_context=None):
        if not request.GET.get("q"):  # a search here reads every message's text
            return super().changelist_view(request, extra_context)
        return budgeted_changelist(self, super().changelist_view, request, extra_context)

    @admin.display(description="content")
    def short_content(self, obj):
        if obj.tool_calls and not obj.content:  # an answer that only called tools
            return Truncator("calls " + ", ".join(call["name"] for call in obj.tool_calls)).chars(80)
        return Truncator(obj.content).chars(80) or "(empty)"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Invite)
class InviteAdmin(admin.ModelAdmin):
    """Invitations for CHATGLM_SIGNUP=invite: add one, then send its sign-up link."""

    list_display = ("__str__", "signup_link", "uses_left", "expires_at", "is_usable", "created_by", "created_at")
    readonly_fields = ("signup_link", "created_by", "created_at")
    fields = ("note", "uses_left", "expires_at", "signup_link", "created_by", "created_at")

    @admin.display(description="sign-up link")
    def signup_link(self, obj) -> str:
        return f"{reverse('signup')}?invite={obj.token}" if obj.pk else "(shown once saved)"

    @admin.display(boolean=True, description="usable")
    def is_usable(self, obj) -> bool:
        return obj.usable

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)
