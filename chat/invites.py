"""Invitations to sign up while CHATGLM_SIGNUP=invite: tokens an admin creates in the admin,
each good for a number of sign-ups (1 by default) until it expires."""

from __future__ import annotations

import datetime
import secrets

from django.conf import settings
from django.db import models
from django.db.models import F
from django.utils import timezone

DEFAULT_LIFETIME = datetime.timedelta(days=7)


def new_token() -> str:
    return secrets.token_urlsafe(24)


def default_expiry() -> datetime.datetime:
    return timezone.now() + DEFAULT_LIFETIME


class InviteQuerySet(models.QuerySet):
    def usable(self) -> InviteQuerySet:
        return self.filter(uses_left__gt=0, expires_at__gt=timezone.now())

    def consume(self, token: str) -> bool:
        """Use one sign-up of `token`; False if it is unknown, used up or expired. One UPDATE,
        so two sign-ups racing for the last use cannot both get it."""
        return bool(token) and self.usable().filter(token=token).update(uses_left=F("uses_left") - 1) == 1


class Invite(models.Model):
    token = models.CharField(max_length=64, unique=True, default=new_token, editable=False)
    uses_left = models.PositiveIntegerField(default=1, help_text="sign-ups this invitation still allows")
    expires_at = models.DateTimeField(default=default_expiry)
    note = models.CharField(max_length=200, blank=True, default="", help_text="for whom, why (admins only)")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+", editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = InviteQuerySet.as_manager()

    class Meta:
        app_label = "chat"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.note or f"invite {self.token[:6]}…"

    @property
    def usable(self) -> bool:
        return self.uses_left > 0 and self.expires_at > timezone.now()
