"""Base settings: every value is read from the environment here (12-factor)."""

from __future__ import annotations

from typing import Any

from config.env import BASE_DIR, LOCAL_STATE_DIR, env, parse_database_url

DEBUG = env.bool("DJANGO_DEBUG", default=False)
SECRET_KEY = env.str("DJANGO_SECRET_KEY")  # no default: a missing secret fails at boot
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env.list(
    "DJANGO_CSRF_TRUSTED_ORIGINS", default=["http://127.0.0.1:8000", "http://localhost:8000"]
)

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "apps.common",
    "apps.tenancy",
    "apps.accounts",
    "apps.audit",
    "apps.vault",
    "apps.datasets",
    "apps.training",
    "apps.federation",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "apps.common.middleware.RequestContextMiddleware",
    "apps.common.textinput.NulRejectMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

# --- Database -------------------------------------------------------------------------------
# `default` is the application role: not the owner of any table, NOSUPERUSER, NOBYPASSRLS.
# `owner` owns the schema and runs migrations (`manage.py migrate --database owner`).
_DB_POOL = env.bool("COHORT_DB_POOL", default=True)


def _database(url: str, *, pool: bool) -> dict[str, object]:
    cfg = parse_database_url(url)
    cfg["ATOMIC_REQUESTS"] = True
    cfg["CONN_MAX_AGE"] = 0
    cfg["CONN_HEALTH_CHECKS"] = True
    options: dict[str, object] = dict(cfg["OPTIONS"])  # type: ignore[call-overload]
    options.setdefault("connect_timeout", 5)
    if pool:
        options["pool"] = {"min_size": 1, "max_size": env.int("COHORT_DB_POOL_MAX", default=8)}
    cfg["OPTIONS"] = options
    return cfg


# `platform` is the platform role (cohort_platform, NOSUPERUSER, NOBYPASSRLS): console, scheduler,
# sweeps and verification reach every tenant's rows through it (apps.tenancy.scope.platform_scope),
# never through a setting. Without DATABASE_PLATFORM_URL it is the app role, which sees nothing
# cross-tenant: platform work then fails closed.
# `owner` exists only in the process that migrates (DATABASE_OWNER_URL is given to it alone).
DATABASES = {
    "default": _database(env.str("DATABASE_URL"), pool=_DB_POOL),
    "platform": _database(env.str("DATABASE_PLATFORM_URL", default=env.str("DATABASE_URL")), pool=False),
}
DATABASES["platform"]["ATOMIC_REQUESTS"] = False
if env.str("DATABASE_OWNER_URL", default=""):
    DATABASES["owner"] = _database(env.str("DATABASE_OWNER_URL"), pool=False)
    DATABASES["owner"]["ATOMIC_REQUESTS"] = False
DATABASE_ROUTERS = ["apps.tenancy.routing.ScopeRouter"]
COHORT_APP_DB_ROLE = DATABASES["default"]["USER"] or "cohort_app"
COHORT_PLATFORM_DB_ROLE = DATABASES["platform"]["USER"] or "cohort_platform"
# Signs the row-level-security context (apps.tenancy.scope); the migrate step installs it in the
# database. Held by the serving processes, never by SQL.
COHORT_DB_CONTEXT_KEY = env.str("COHORT_DB_CONTEXT_KEY")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: cache (rate limits, lockout), Celery broker, Channels layer ----------------------
REDIS_URL = env.str("REDIS_URL")
CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
CHANNEL_LAYERS = {
    "default": {
        # Redis pub/sub, one subscription per process fanned out to its sockets (see the module).
        "BACKEND": "apps.common.channel_layer.FanoutChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL], "prefix": "cohort", "capacity": 1000},
    }
}
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL)
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
# Training tasks are sent to the job's queue (cpu / gpu) explicitly by the scheduler.
CELERY_TASK_ROUTES = {
    "training.run_job": {"queue": "cpu"},
    "training.run_node": {"queue": "cpu"},
    "training.schedule": {"queue": "default"},
    # Federations: site work on ``fl`` (an owner's own worker: ``fl.<slug>``, chosen per message).
    "federation.site_round": {"queue": "fl"},
    "federation.advance": {"queue": "default"},
    "federation.sweep": {"queue": "default"},
}
# Longer than the longest task (time_limit) plus the longest ETA, so a task is not redelivered
# while it still runs.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=4 * 3600)}
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=3 * 3600)
CELERY_TASK_SOFT_TIME_LIMIT = CELERY_TASK_TIME_LIMIT - 60
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE = {
    "datasets-purge-expired": {"task": "datasets.purge_expired", "schedule": 3600.0},
    "audit-checkpoint": {"task": "audit.checkpoint_create", "schedule": 3600.0},
    # Verifies every chain (as the platform); a broken one is a platform event, /readyz and the console.
    "audit-verify-all": {
        "task": "audit.verify_all",
        "schedule": env.float("COHORT_AUDIT_VERIFY_SECONDS", default=24 * 3600.0),
    },
    # Admits waiting jobs and re-enqueues admitted jobs whose worker vanished (lease expired) or
    # whose message was lost between commit and publish.
    # Federations: closes rounds past their deadline, re-sends site tasks whose worker vanished.
    "federation-sweep": {
        "task": "federation.sweep",
        "schedule": env.float("COHORT_FL_SWEEP_SECONDS", default=2.0),
    },
    "training-schedule": {
        "task": "training.schedule",
        "schedule": env.float("COHORT_SCHEDULER_INTERVAL", default=10.0),
    },
}

# --- Auth -----------------------------------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "/admin/login/"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_AGE = env.int("DJANGO_SESSION_AGE", default=8 * 3600)
CSRF_COOKIE_SAMESITE = "Lax"
COHORT_API_KEY_PEPPER = env.str("COHORT_API_KEY_PEPPER")
COHORT_LOGIN_MAX_FAILURES = env.int("COHORT_LOGIN_MAX_FAILURES", default=5)
COHORT_LOGIN_IP_MAX_FAILURES = env.int("COHORT_LOGIN_IP_MAX_FAILURES", default=30)
COHORT_LOGIN_LOCKOUT_SECONDS = env.int("COHORT_LOGIN_LOCKOUT_SECONDS", default=15 * 60)
COHORT_API_RATE_PER_MINUTE = env.int("COHORT_API_RATE_PER_MINUTE", default=1200)
COHORT_TRUSTED_PROXY_COUNT = env.int("COHORT_TRUSTED_PROXY_COUNT", default=0)
COHORT_REQUIRE_ADMIN_OTP = env.bool("COHORT_REQUIRE_ADMIN_OTP", default=True)
COHORT_BREAK_GLASS_MINUTES = env.int("COHORT_BREAK_GLASS_MINUTES", default=15)
# Ed25519 private key (base64 of the 32-byte seed) that signs audit checkpoints. Only the process
# that signs holds it (the worker running `audit.checkpoint_create`, or an operator's
# `manage.py audit_checkpoint`); web and beat run without it (docs/audit.md "Keys").
COHORT_AUDIT_SIGNING_KEY = env.str("COHORT_AUDIT_SIGNING_KEY", default="")
# The matching public key (base64 of 32 bytes): verifies stored checkpoints where the private key is
# absent. Derived from COHORT_AUDIT_SIGNING_KEY when unset there.
COHORT_AUDIT_PUBLIC_KEY = env.str("COHORT_AUDIT_PUBLIC_KEY", default="")
# Seconds between scheduled verifications of every chain (beat `audit.verify_all`).
COHORT_AUDIT_VERIFY_SECONDS = env.float("COHORT_AUDIT_VERIFY_SECONDS", default=24 * 3600.0)
# /readyz answers 503 while the last verification found a broken chain (set false to report only).
COHORT_AUDIT_TAMPER_FAILS_READYZ = env.bool("COHORT_AUDIT_TAMPER_FAILS_READYZ", default=True)
COHORT_AUDIT_RETENTION_DAYS = env.int("COHORT_AUDIT_RETENTION_DAYS", default=6 * 366)

# --- DRF / OpenAPI --------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "apps.accounts.authentication.ApiKeyAuthentication",
        "apps.accounts.authentication.CsrfSessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_THROTTLE_CLASSES": ["apps.common.ratelimit.PrincipalRateThrottle"],
    "DEFAULT_PARSER_CLASSES": ["apps.common.parsers.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PAGINATION_CLASS": "apps.common.pagination.CursorPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "apps.common.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Cohort API",
    "DESCRIPTION": (
        "Multi-tenant federated and managed training platform. Every tenant resource lives under "
        "`/api/v1/tenants/{slug}/`. Authenticate with a session (browser, CSRF required on writes) "
        "or an API key: `Authorization: Bearer <key>`. Errors share one shape: "
        '`{"error": {"code", "message", "fields"}}`.'
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "ENUM_NAME_OVERRIDES": {
        "FederationSiteRoleEnum": "apps.federation.models.FederationSite.Role",
        "TenantRoleEnum": "apps.tenancy.models.Role",
    },
}

# --- Requests -------------------------------------------------------------------------------
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("COHORT_MAX_JSON_BODY", default=1024 * 1024)
DATA_UPLOAD_MAX_NUMBER_FIELDS = 1000

# --- Static files ---------------------------------------------------------------------------
STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# The analysts' web app (frontend/, built by scripts/frontend.py into frontend/dist): its hashed
# assets are collected under /static/app/; apps.common.webapp serves its index.html at / and /app/….
COHORT_WEBAPP_DIST = BASE_DIR / "frontend" / "dist"
STATICFILES_DIRS = [("app", COHORT_WEBAPP_DIST)] if COHORT_WEBAPP_DIST.is_dir() else []
STORAGES: dict[str, dict[str, Any]] = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

COHORT_STATE_DIR = LOCAL_STATE_DIR

# --- Datasets, keys, storage (docs/datasets.md, docs/encryption.md) ---------------------------
# Key-encryption key provider: "file:/path/keyring.json" (default, created on first use),
# "env:VAR" (a keyring JSON or one base64 key in VAR), or "package.module:factory" (a KMS adapter).
COHORT_KEK = env.str("COHORT_KEK", default="")
COHORT_KEY_DIR = env.str("COHORT_KEY_DIR", default=str(LOCAL_STATE_DIR / "keys"))
# Rotate a data key well below the 2**32 random-nonce bound of AES-GCM (NIST SP 800-38D).
COHORT_DEK_MAX_ENCRYPTIONS = env.int("COHORT_DEK_MAX_ENCRYPTIONS", default=2**30)
COHORT_ENCRYPTION_FRAME_BYTES = env.int("COHORT_ENCRYPTION_FRAME_BYTES", default=1024 * 1024)
# Where encrypted objects live: "file" (COHORT_OBJECT_DIR) or "s3" (django-storages; AWS_* settings).
COHORT_OBJECT_STORAGE = env.str("COHORT_OBJECT_STORAGE", default="file")
COHORT_OBJECT_DIR = env.str("COHORT_OBJECT_DIR", default=str(LOCAL_STATE_DIR / "objects"))
# Plaintext exists only here, only while a file is processed, and is removed after use.
COHORT_TMP_DIR = env.str("COHORT_TMP_DIR", default=str(LOCAL_STATE_DIR / "tmp"))
COHORT_DATASET_MAX_UPLOAD_BYTES = env.int("COHORT_DATASET_MAX_UPLOAD_BYTES", default=20 * 1024**3)
COHORT_DATASET_QUOTA_BYTES = env.int("COHORT_DATASET_QUOTA_BYTES", default=50 * 1024**3)
COHORT_DATASET_QUOTA_COUNT = env.int("COHORT_DATASET_QUOTA_COUNT", default=200)
# Uploads up to this size are processed in the request (errors come back as 4xx at once);
# larger ones are processed by a worker (202, the version reports progress and errors).
COHORT_DATASET_INLINE_MAX_BYTES = env.int("COHORT_DATASET_INLINE_MAX_BYTES", default=64 * 1024 * 1024)
COHORT_DATASET_RETENTION_DAYS = env.int("COHORT_DATASET_RETENTION_DAYS", default=30)
COHORT_UPLOAD_SESSION_HOURS = env.int("COHORT_UPLOAD_SESSION_HOURS", default=24)
COHORT_UPLOAD_MAX_PART_BYTES = env.int("COHORT_UPLOAD_MAX_PART_BYTES", default=256 * 1024 * 1024)
# Default privacy budget of a new dataset (its owner changes it).
COHORT_DEFAULT_EPSILON = env.float("COHORT_DEFAULT_EPSILON", default=8.0)
# Training: encrypted checkpoints live here (a folder every worker of a job can reach).
COHORT_CHECKPOINT_DIR = env.str("COHORT_CHECKPOINT_DIR", default=str(LOCAL_STATE_DIR / "checkpoints"))
COHORT_JOB_LEASE_SECONDS = env.int("COHORT_JOB_LEASE_SECONDS", default=120)
# Federations (apps.federation): a site task's lease (renewed while it trains), the largest update
# accepted, and the tenants (slugs) whose sites run on their own worker (queue ``fl.<slug>``).
COHORT_FL_LEASE_SECONDS = env.int("COHORT_FL_LEASE_SECONDS", default=60)
COHORT_FL_MAX_UPDATE_BYTES = env.int("COHORT_FL_MAX_UPDATE_BYTES", default=512 * 1024 * 1024)
# A site worker's memory between rounds (apps.federation.services.site_cache): each site's prepared
# tensors and each round's model, in this process only; bounded in MB (0: off) and idle seconds.
COHORT_FL_CACHE_MB = env.float("COHORT_FL_CACHE_MB", default=512.0)
COHORT_FL_CACHE_SECONDS = env.float("COHORT_FL_CACHE_SECONDS", default=900.0)
# Every fl worker: sites' prepared tensors kept encrypted (coordinator's key) until the site drops or the
# federation ends (apps.federation.services.prepared_store).
COHORT_FL_PREPARED_STORE = env.bool("COHORT_FL_PREPARED_STORE", default=True)
# How often an API key's open websocket looks at the key again (revoked or expired: it closes).
COHORT_WS_KEY_RECHECK_SECONDS = env.float("COHORT_WS_KEY_RECHECK_SECONDS", default=5.0)
# The one websocket endpoint (/ws/v1/, apps.common.socket): how often an open socket looks at its
# session or key, and at each subscription's access, again (the backstop of control messages), and
# the stream kinds it serves (each app's handler).
COHORT_WS_RECHECK_SECONDS = env.float("COHORT_WS_RECHECK_SECONDS", default=4.0)
COHORT_LIVE_STREAMS = [
    "apps.training.consumers.JobStream",
    "apps.federation.consumers.FederationStream",
    "apps.datasets.consumers.DatasetStream",
    "apps.audit.consumers.ActivityStream",
]
COHORT_FL_OWN_WORKER_TENANTS = env.list("COHORT_FL_OWN_WORKER_TENANTS", default=[])
COHORT_JOB_MAX_RESTARTS = env.int("COHORT_JOB_MAX_RESTARTS", default=5)
# Training pool capacity (slots = worker processes) and per-tenant quota defaults (overridable per
# tenant, audited: `manage.py training_quota`). See docs/training.md "Scheduling".
COHORT_PREDICT_MAX_MODEL_BYTES = env.int("COHORT_PREDICT_MAX_MODEL_BYTES", default=64 * 1024 * 1024)
# Multi-node jobs: the address node 0's worker is reachable at by the other nodes (set per worker
# host, e.g. the pod IP) and how long nodes wait for each other.
COHORT_RENDEZVOUS_HOST = env.str("COHORT_RENDEZVOUS_HOST", default="127.0.0.1")
COHORT_RENDEZVOUS_TIMEOUT = env.float("COHORT_RENDEZVOUS_TIMEOUT", default=300.0)
COHORT_CODE_VERSION = env.str("COHORT_CODE_VERSION", default="")  # recorded in model lineage
COHORT_POOL_CPU_SLOTS = env.int("COHORT_POOL_CPU_SLOTS", default=2)
COHORT_POOL_GPU_SLOTS = env.int("COHORT_POOL_GPU_SLOTS", default=0)
# Site tasks the platform's ``fl`` pool runs at once (its worker processes; site tasks beyond it
# wait, selected, with a reason). Owners' own workers (fl.<slug>) are not part of it.
COHORT_POOL_FL_SLOTS = env.int("COHORT_POOL_FL_SLOTS", default=8)
COHORT_QUOTA_CONCURRENT_JOBS = env.int("COHORT_QUOTA_CONCURRENT_JOBS", default=4)
COHORT_QUOTA_CPU_JOBS = env.int("COHORT_QUOTA_CPU_JOBS", default=4)
COHORT_QUOTA_GPU_HOURS = env.float("COHORT_QUOTA_GPU_HOURS", default=10.0)
# Federation site tasks a coordinating tenant may have on the platform's ``fl`` pool at once.
COHORT_QUOTA_SITE_TASKS = env.int("COHORT_QUOTA_SITE_TASKS", default=8)
COHORT_SCHEDULER_INTERVAL = env.float("COHORT_SCHEDULER_INTERVAL", default=10.0)
if COHORT_OBJECT_STORAGE == "s3":
    STORAGES["objects"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": env.str("COHORT_S3_BUCKET"),
            "endpoint_url": env.str("COHORT_S3_ENDPOINT_URL", default="") or None,
            "location": env.str("COHORT_S3_PREFIX", default="cohort"),
            "file_overwrite": False,
            "default_acl": None,
        },
    }
elif COHORT_OBJECT_STORAGE == "file":
    STORAGES["objects"] = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {
            "location": COHORT_OBJECT_DIR,
            "file_permissions_mode": 0o600,
            "directory_permissions_mode": 0o700,
        },
    }
else:
    raise ValueError(f"COHORT_OBJECT_STORAGE must be 'file' or 's3', not {COHORT_OBJECT_STORAGE!r}")
COHORT_REPORTS_DIR = env.str("COHORT_REPORTS_DIR", default=str(BASE_DIR / "reports"))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_context": {"()": "apps.common.logging.RequestContextFilter"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["request_context"]},
    },
    "root": {"handlers": ["console"], "level": env.str("DJANGO_LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
