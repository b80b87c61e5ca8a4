"""Settings for chatglm-django, all from the environment (README lists every variable).

Safe defaults: DEBUG off, a generated SECRET_KEY persisted under data/, localhost only,
SQLite at data/db.sqlite3 configured for concurrent writers.
"""

import os
import secrets
import tempfile
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("CHATGLM_DATA_DIR", BASE_DIR / "data"))
# The data folder holds the database (sessions, password hashes, conversations) and the secret
# key: private to the server's user, whatever the umask (README "Security").
DATA_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)


def _owned(path: Path) -> bool:
    return not hasattr(os, "getuid") or path.stat().st_uid == os.getuid()


if _owned(DATA_DIR):  # a folder someone else provides is left as it is
    DATA_DIR.chmod(0o700)


def env_bool(name: str, default: bool = False) -> bool:
    return os.environ.get(name, "1" if default else "0").strip().lower() in ("1", "true", "yes", "on")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def _secret_key() -> str:
    """SECRET_KEY from the environment, or one generated once and kept in data/secret_key."""
    if os.environ.get("DJANGO_SECRET_KEY"):
        return os.environ["DJANGO_SECRET_KEY"]
    path = DATA_DIR / "secret_key"
    if not path.exists():
        # Written whole to a temporary file, then linked into place: processes that start at
        # once never read a half-written key, and the first link wins (the others read it).
        fd, temporary = tempfile.mkstemp(prefix=".secret_key.", dir=DATA_DIR)  # mode 0600
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(50))
            os.link(temporary, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(temporary)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = env_bool("CHATGLM_DEBUG")
ALLOWED_HOSTS = env_list("CHATGLM_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CHATGLM_CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "corsheaders",
    "channels",
    "chat",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "servestatic.middleware.ServeStaticMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
# No GZipMiddleware: it gzips each chunk of an async stream as its own gzip member, and
# browsers decode only the first one (docs/pitfalls.md#no-gzip).

ROOT_URLCONF = "chatglm_site.urls"
ASGI_APPLICATION = "chatglm_site.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

def _private_sqlite_files(database: Path) -> None:
    """The SQLite file created 0600 (SQLite gives its -wal and -shm files the database file's
    mode), and one left readable by an older version made private."""
    if str(database) in ("", ":memory:") or not database.parent.is_dir():
        return
    os.close(os.open(database, os.O_RDWR | os.O_CREAT, 0o600))
    for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
        try:
            if _owned(path):
                path.chmod(0o600)
        except FileNotFoundError:
            pass


DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{DATA_DIR / 'db.sqlite3'}",
        conn_max_age=env_int("CHATGLM_DB_CONN_MAX_AGE", 0),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Concurrent streams finish and write at once. IMMEDIATE transactions take the write lock
    # up front (a DEFERRED read-then-write fails at once with "database is locked"), WAL lets
    # readers go on during a write, and the timeout makes writers wait their turn (docs/pitfalls.md#sqlite).
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    _private_sqlite_files(Path(DATABASES["default"]["NAME"]))

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# ServeStatic serves app static files straight from the finders, so `serve` works without
# collectstatic; a deployment behind a CDN can run collectstatic and set this off.
SERVESTATIC_USE_FINDERS = True
SERVESTATIC_AUTOREFRESH = DEBUG

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# ---- Cross-origin program API and the OpenAI surface (README "Security", "The APIs") ---------
# Browser clients on other origins (the seed's page, often opened from a file or another port;
# the openai SDK in a browser) call the program API only: `/chat`, `/stream`, `/clear`, `/v1/*`.
# CHATGLM_CORS_ORIGINS lists origins (`null` for pages opened from file://), or `*` for any.
_cors_origins = env_list("CHATGLM_CORS_ORIGINS")
CORS_ALLOW_ALL_ORIGINS = "*" in _cors_origins
CORS_ALLOWED_ORIGINS = [origin for origin in _cors_origins if origin != "*"]
CORS_URLS_REGEX = r"^/(chat|stream|clear|v1/.*)$"
# Never credentials: a cross-origin request then carries no cookie, so it can only act as a
# program (a key, or the open API) and the session-bearing page API is never exposed to it.
CORS_ALLOW_CREDENTIALS = False
# Any request header: SSE helpers send Cache-Control and Last-Event-ID, the openai SDK a
# growing set of x-stainless-* headers. `*` means every header but Authorization for requests
# without credentials (Fetch standard), so Authorization is named too.
CORS_ALLOW_HEADERS = ["*", "authorization"]
CORS_EXPOSE_HEADERS = ["x-request-id", "retry-after"]  # the SDKs read both
# vLLM's --served-model-name: the names the OpenAI API answers to (the first is the one
# /v1/models lists first); unset: the model's own id.
OPENAI_SERVED_MODEL_NAMES = env_list("CHATGLM_SERVED_MODEL_NAMES")
# ---- end of the cross-origin / OpenAI block -----------------------------------------------------

SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"

if os.environ.get("REDIS_URL"):
    # A consumer waits for its next message with a blocking read of 5 s (channels-redis's
    # brpop_timeout); redis-py's own socket timeout is also 5 s, so an idle read timed out and
    # Daphne closed the socket (1011). The socket timeout must outlast the blocking read; a
    # dead Redis is still noticed (keep-alive, health checks, the connect timeout).
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [{
                    "address": os.environ["REDIS_URL"],
                    "socket_timeout": 30,
                    "socket_connect_timeout": 5,
                    "socket_keepalive": True,
                    "health_check_interval": 15,
                }],
                "capacity": 1500,
                "expiry": 30,
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "chat.channel_layer.ThrottledInMemoryChannelLayer"}}

# The chat service's own settings (README: "Configuration").
CHATGLM = {
    "MAX_QUERY_CHARS": env_int("CHATGLM_MAX_QUERY_CHARS", 16000),
    "MAX_HISTORY": env_int("CHATGLM_MAX_HISTORY", 8),
    "STORE_API_TURNS": env_bool("CHATGLM_STORE_API_TURNS", True),
    "API_KEYS": env_list("CHATGLM_API_KEYS"),
    "RETENTION_DAYS": env_int("CHATGLM_RETENTION_DAYS", 0),
    "PING_SECONDS": float(os.environ.get("CHATGLM_PING_SECONDS", "15")),
    "MAX_RUNNING_PER_USER": env_int("CHATGLM_MAX_RUNNING_PER_USER", 2),
    "REQUIRE_LOGIN": env_bool("CHATGLM_REQUIRE_LOGIN"),
    "GENERATION_TIMEOUT": float(os.environ.get("CHATGLM_GENERATION_TIMEOUT", "") or 300),
}

# -- Resources and abuse (README "Configuration"): bounded bodies, rate limits, fair shares.
# A request body past this size is refused by chat.asgi_limits before any of it is buffered.
MAX_BODY_BYTES = env_int("CHATGLM_MAX_BODY_BYTES", 2_621_440)
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_BODY_BYTES
CHATGLM.update({
    "BODY_TIMEOUT": float(os.environ.get("CHATGLM_BODY_TIMEOUT", "30")),
    "TURNS_PER_MINUTE": env_int("CHATGLM_TURNS_PER_MINUTE", 60),
    "CONVERSATIONS_PER_MINUTE": env_int("CHATGLM_CONVERSATIONS_PER_MINUTE", 20),
    "SESSIONS_PER_MINUTE": env_int("CHATGLM_SESSIONS_PER_MINUTE", 20),
    "MAX_RUNNING_PER_IP": env_int("CHATGLM_MAX_RUNNING_PER_IP", 4),
    "MAX_VISITOR_CONVERSATIONS": env_int("CHATGLM_MAX_VISITOR_CONVERSATIONS", 500),
    "MAX_SOCKETS_PER_SESSION": env_int("CHATGLM_MAX_SOCKETS_PER_SESSION", 8),
    "MAX_SOCKETS_PER_IP": env_int("CHATGLM_MAX_SOCKETS_PER_IP", 64),
    "THROTTLE_EXEMPT": env_list("CHATGLM_THROTTLE_EXEMPT", "127.0.0.0/8,::1"),
    "REDIS_URL": os.environ.get("REDIS_URL", "").strip(),  # rate limits shared by every process
    "ADMIN_SEARCH_SECONDS": float(os.environ.get("CHATGLM_ADMIN_SEARCH_SECONDS", "10")),
})

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "chat": {"handlers": ["console"], "level": os.environ.get("CHATGLM_LOG_LEVEL", "INFO")},
        "django": {"handlers": ["console"], "level": "WARNING"},
    },
}

# ---- Access, security headers, HTTPS and login throttling (README "Security") ----------------
# One block so that it merges cleanly with the rest of the settings; every name is documented
# in the README's Configuration table and Security section.
import datetime  # noqa: E402

from csp.constants import NONCE, NONE, SELF  # noqa: E402

CHATGLM["SIGNUP"] = os.environ.get("CHATGLM_SIGNUP", "open").strip().lower()
if CHATGLM["SIGNUP"] not in ("open", "closed", "invite"):
    raise ValueError(f"CHATGLM_SIGNUP must be open, closed or invite, not {CHATGLM['SIGNUP']!r}")

INSTALLED_APPS += ["csp", "axes"]
MIDDLEWARE.insert(MIDDLEWARE.index("django.middleware.security.SecurityMiddleware") + 1, "csp.middleware.CSPMiddleware")
MIDDLEWARE.append("axes.middleware.AxesMiddleware")  # last, as django-axes asks

# No inline script anywhere: the page's and the admin's scripts are files, and the page's
# import map carries the response's nonce. Styles are files too (no style attributes).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF, NONCE],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],  # data: for the favicon and the admin's icons
        "connect-src": [SELF],  # 'self' covers ws:// and wss:// to this host and port (CSP 3)
        "font-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}
if os.environ.get("CHATGLM_CSP_REPORT_URI"):
    CONTENT_SECURITY_POLICY["DIRECTIVES"]["report-uri"] = [os.environ["CHATGLM_CSP_REPORT_URI"]]

# HTTPS behind a proxy that sets X-Forwarded-Proto (and X-Forwarded-For): Secure cookies,
# HSTS, and plain-HTTP requests redirected (except the proxy's health check).
HTTPS = env_bool("CHATGLM_HTTPS")
if HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env_bool("CHATGLM_SSL_REDIRECT", True)
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    SECURE_HSTS_SECONDS = env_int("CHATGLM_HSTS_SECONDS", 31_536_000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("CHATGLM_HSTS_INCLUDE_SUBDOMAINS")
    SECURE_HSTS_PRELOAD = env_bool("CHATGLM_HSTS_PRELOAD")

# Login throttling (django-axes): after CHATGLM_LOGIN_FAILURES failed logins for one username
# from one address, that pair is refused (429) until the cool-off has passed, right password
# or not. Behind the HTTPS proxy the address is the one the proxy saw (chat.client_ip).
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = env_int("CHATGLM_LOGIN_FAILURES", 5)
AXES_COOLOFF_TIME = datetime.timedelta(minutes=env_int("CHATGLM_LOGIN_COOLOFF_MINUTES", 15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_CLIENT_IP_CALLABLE = "chat.client_ip.client_ip"
# ---- end of the access block ------------------------------------------------------------------

# ---- Deployment: access log with request ids, several workers (README "Deployment") ----------
# Every log line carries the request id of the request it belongs to ("-" outside requests);
# chat.access writes one JSON line per HTTP response or WebSocket session.
LOGGING["filters"] = {"request_id": {"()": "chat.metrics.RequestIdFilter"}}
LOGGING["formatters"]["plain"]["format"] = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"
LOGGING["handlers"]["console"]["filters"] = ["request_id"]
LOGGING["loggers"]["chat.access"] = {
    "handlers": ["console"], "propagate": False,
    "level": "INFO" if env_bool("CHATGLM_ACCESS_LOG", True) else "WARNING",
}
# Seconds a running answer may go on after SIGTERM before it is ended as a saved error.
CHATGLM["SHUTDOWN_GRACE"] = float(os.environ.get("CHATGLM_SHUTDOWN_GRACE", "30"))
# ---- end of the deployment block ----------------------------------------------------------------
