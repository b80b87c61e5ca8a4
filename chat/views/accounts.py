"""Accounts: sign up, log in, log out (django.contrib.auth), at /accounts/.

Logging in or signing up hands the session's anonymous conversations to the account
(chat.signals, on `user_logged_in`), so nothing written before logging in is lost.

Who may sign up is CHATGLM_SIGNUP: `open` (anyone), `closed` (nobody: accounts are made by
an admin) or `invite` (with a token an admin created in the admin, chat.invites). Failed
logins are throttled by django-axes (settings: AXES_*).
"""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import auth
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import UserCreationForm
from django.db import transaction
from django.shortcuts import redirect, render, resolve_url
from django.urls import path
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.generic.edit import FormView

from ..invites import Invite

SIGNUP_MODES = ("open", "closed", "invite")


def signup_mode() -> str:
    return settings.CHATGLM["SIGNUP"]


class InviteSignupForm(UserCreationForm):
    invite = forms.CharField(label="Invitation code", max_length=64, strip=True,
                             help_text="The code from your invitation link.")

    def clean_invite(self) -> str:
        token = self.cleaned_data["invite"]
        if not Invite.objects.usable().filter(token=token).exists():
            raise forms.ValidationError("This invitation is unknown, used up or expired.", code="invalid_invite")
        return token

    @transaction.atomic
    def save(self, commit=True):
        # Checked in clean_invite, but another sign-up may have used it since: consume it in
        # the transaction that creates the account, so that neither happens without the other.
        if not Invite.objects.consume(self.cleaned_data["invite"]):
            raise InviteUsedUp()
        return super().save(commit)


class InviteUsedUp(Exception):
    pass


class SignupView(FormView):
    template_name = "registration/signup.html"

    def dispatch(self, request, *args, **kwargs):
        if request.user.is_authenticated:
            return redirect(self.get_success_url())
        if signup_mode() == "closed":
            return render(request, "registration/signup_closed.html", status=403)
        return super().dispatch(request, *args, **kwargs)

    def get_form_class(self):
        return InviteSignupForm if signup_mode() == "invite" else UserCreationForm

    def get_initial(self):
        return {"invite": self.request.GET.get("invite", "")} if signup_mode() == "invite" else {}

    def form_valid(self, form):
        try:
            user = form.save()
        except InviteUsedUp:
            form.add_error("invite", "This invitation is unknown, used up or expired.")
            return self.form_invalid(form)
        auth.login(self.request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect(self.get_success_url())

    def get_success_url(self) -> str:
        target = self.request.POST.get("next") or self.request.GET.get("next")
        if target and url_has_allowed_host_and_scheme(
            target, allowed_hosts={self.request.get_host()}, require_https=self.request.is_secure()
        ):
            return target
        return resolve_url(settings.LOGIN_REDIRECT_URL)

    def get_context_data(self, **kwargs):
        return {**super().get_context_data(**kwargs), "signup_mode": signup_mode(),
                "next": self.request.POST.get("next") or self.request.GET.get("next", "")}


class LoginView(auth_views.LoginView):
    template_name = "registration/login.html"
    redirect_authenticated_user = True

    def get_context_data(self, **kwargs):
        return {**super().get_context_data(**kwargs), "signup_mode": signup_mode()}


urlpatterns = [
    path("accounts/login/", LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),  # POST only (Django >= 5.0)
    path("accounts/signup/", SignupView.as_view(), name="signup"),
]
