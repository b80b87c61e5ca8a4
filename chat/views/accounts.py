"""Accounts: sign up, log in, log out (django.contrib.auth), at /accounts/.

Logging in or signing up hands the session's anonymous conversations to the account
(chat.signals, on `user_logged_in`), so nothing written before logging in is lost.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib import auth
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import UserCreationForm
from django.shortcuts import redirect, resolve_url
from django.urls import path
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.generic.edit import FormView


class SignupView(FormView):
    template_name = "registration/signup.html"
    form_class = UserCreationForm

    def dispatch(self, request, *args, **kwargs):
        if request.user.is_authenticated:
            return redirect(self.get_success_url())
        return super().dispatch(request, *args, **kwargs)

    def form_valid(self, form):
        user = form.save()
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
        return {**super().get_context_data(**kwargs), "next": self.request.POST.get("next") or self.request.GET.get("next", "")}


urlpatterns = [
    path("accounts/login/",
         auth_views.LoginView.as_view(template_name="registration/login.html", redirect_authenticated_user=True),
         name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),  # POST only (Django >= 5.0)
    path("accounts/signup/", SignupView.as_view(), name="signup"),
]
