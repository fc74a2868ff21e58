"""manage.py audit_verify / audit_checkpoint: output, exit codes, checkpoint files (also forged ones)."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections, transaction

from apps.audit.models import AuditCheckpoint, AuditEvent
from apps.audit.tasks import audit_checkpoint_task
from apps.audit.verification import KeyMissing
from apps.tenancy.scope import platform_scope

ROOT = Path(__file__).resolve().parents[3]


def run(*args: str) -> tuple[int, str]:
    """Run a command in-process; return (exit status it would have, stdout)."""
    out = io.StringIO()
    try:
        call_command(*args, stdout=out, stderr=io.StringIO())
    except CommandError as exc:
        return exc.returncode, out.getvalue() + str(exc)
    return 0, out.getvalue()


def write_checkpoint(tmp_path: Path, name: str = "cp.json") -> Path:
    path = tmp_path / name
    assert run("audit_checkpoint", "--out", str(path))[0] == 0
    return path


def forge(doc: dict[str, Any], **chains: list[Any]) -> dict[str, Any]:
    """The same document with some chains' heads changed and the signature kept."""
    payload = json.loads(doc["payload"])
    payload["chains"].update(chains)
    return {**doc, "payload": json.dumps(payload, sort_keys=True, separators=(",", ":"))}


def signed_by_other_key(doc: dict[str, Any]) -> dict[str, Any]:
    """A well-formed checkpoint signed by a key that is not the configured one (and naming it)."""
    key = Ed25519PrivateKey.generate()
    pub = base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
    return {**doc, "signature": base64.b64encode(key.sign(doc["payload"].encode())).decode(), "public_key": pub}


@pytest.mark.django_db
def test_verify_all_chains_ok(tenant: Any, other_tenant: Any, member: Any) -> None:
    member("owner")
    code, out = run("audit_verify")
    assert code == 0, out
    assert "OK: every chain is intact." in out and "(all chains)" in out
    code, out = run("audit_verify", "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] is True and report["problems"] == []
    assert report["num_chains"] >= 3 and report["num_events"] >= 4  # two tenants + the platform chain


@pytest.mark.django_db
def test_verify_one_tenant(tenant: Any, other_tenant: Any) -> None:
    code, out = run("audit_verify", "--tenant", tenant.slug, "--json")
    report = json.loads(out)
    assert code == 0 and report["num_chains"] == 1 and report["scope"] == f"tenant {tenant.slug}"


@pytest.mark.django_db
def test_unknown_tenant_is_bad_input(tenant: Any) -> None:
    code, out = run("audit_verify", "--tenant", "no-such-tenant")
    assert code == 2 and "unknown tenant 'no-such-tenant'" in out


@pytest.mark.django_db
def test_checkpoint_to_file_and_stdout(tenant: Any, tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path)
    doc = json.loads(path.read_text())
    assert set(doc) == {"payload", "signature", "public_key", "key_id"}
    chains = json.loads(doc["payload"])["chains"]
    assert f"t{tenant.pk}" in chains and chains[f"t{tenant.pk}"][0] >= 1
    code, out = run("audit_checkpoint")
    assert code == 0 and json.loads(out)["key_id"] == doc["key_id"]
    with platform_scope():
        assert AuditCheckpoint.objects.count() == 2
        assert AuditEvent.all_tenants.filter(action="audit.checkpoint_created", tenant=None).count() == 2
    code, out = run("audit_verify", "--checkpoint", str(path))
    assert code == 0 and f"against checkpoint {path}" in out, out


@pytest.mark.django_db
def test_checkpoint_into_missing_directory_is_bad_input(tmp_path: Path) -> None:
    assert run("audit_checkpoint", "--out", str(tmp_path / "nope" / "cp.json"))[0] == 2


@pytest.mark.django_db
@pytest.mark.parametrize(
    "variant",
    [
        "missing",
        "not_json",
        "not_a_document",
        "no_signature",
        "payload_not_text",
        "payload_edited",
        "other_key",
        "garbage_signature",
    ],
)
def test_bad_checkpoint_files_are_rejected(tenant: Any, tmp_path: Path, variant: str) -> None:
    doc = json.loads(write_checkpoint(tmp_path).read_text())
    bad = tmp_path / "bad.json"
    chain = f"t{tenant.pk}"
    contents = {
        "not_json": "{not json",
        "not_a_document": json.dumps([doc]),
        "no_signature": json.dumps({"payload": doc["payload"]}),
        "payload_not_text": json.dumps({**doc, "payload": json.loads(doc["payload"])}),
        "payload_edited": json.dumps(forge(doc, **{chain: [0, "0" * 64]})),
        "other_key": json.dumps(signed_by_other_key(doc)),
        "garbage_signature": json.dumps({**doc, "signature": "!!!"}),
    }
    if variant != "missing":
        bad.write_text(contents[variant])
    code, out = run("audit_verify", "--checkpoint", str(bad))
    assert code == 2, out
    assert str(bad) in out
    if variant in ("payload_edited", "other_key"):
        assert "signature does not verify with the trusted key" in out


def tamper(sql: str, params: list[Any]) -> None:
    """Commit a change to the audit table as its owner with the append-only triggers off (tests only)."""
    with transaction.atomic(using="owner"), connections["owner"].cursor() as cur:
        cur.execute("ALTER TABLE audit_auditevent NO FORCE ROW LEVEL SECURITY")  # the owner sees every row
        cur.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER USER")
        cur.execute(sql, params)
        assert cur.rowcount == 1
        cur.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER USER")
        cur.execute("ALTER TABLE audit_auditevent FORCE ROW LEVEL SECURITY")


@pytest.mark.django_db(transaction=True, databases=["default", "owner"])
def test_tampering_exits_1_and_names_the_first_broken_event(make_tenant: Any, member: Any, tenant: Any) -> None:
    other = make_tenant()
    for role in ("analyst", "auditor", "admin"):
        member(role)
    with platform_scope():
        victim = AuditEvent.all_tenants.get(chain=f"t{tenant.pk}", seq=3)
    tamper("UPDATE audit_auditevent SET details = %s WHERE id = %s", ['{"fixture":false}', victim.pk])
    code, out = run("audit_verify")
    assert code == 1, out
    line = next(ln for ln in out.splitlines() if "first broken" in ln)
    assert (
        f"chain=t{tenant.pk} (tenant {tenant.slug}) first broken seq=3 kind=hash_mismatch event_id={victim.pk}" in line
    )
    assert "TAMPERED: 1 chain(s) broken." in out
    code, out = run("audit_verify", "--json")
    report = json.loads(out[: out.rindex("}") + 1])
    assert code == 1 and report["ok"] is False
    assert [(p["chain"], p["seq"], p["kind"], p["event_id"]) for p in report["problems"]] == [
        (f"t{tenant.pk}", 3, "hash_mismatch", victim.pk)
    ]
    assert run("audit_verify", "--tenant", other.slug)[0] == 0  # the other tenant's chain is intact


def public_key_of(doc: dict[str, Any]) -> str:
    return str(doc["public_key"])


@pytest.mark.django_db
def test_checkpoint_without_the_signing_key_is_a_clear_error(tenant: Any, settings: Any) -> None:
    settings.COHORT_AUDIT_SIGNING_KEY = ""  # the web process: it holds no signing key
    code, out = run("audit_checkpoint")
    assert code == 2 and "COHORT_AUDIT_SIGNING_KEY is not set in this process" in out, out
    with pytest.raises(KeyMissing, match="COHORT_AUDIT_SIGNING_KEY is not set"):
        audit_checkpoint_task()
    with platform_scope():
        assert AuditCheckpoint.objects.count() == 0
        assert not AuditEvent.all_tenants.filter(action="audit.checkpoint_created").exists()
    assert run("audit_verify")[0] == 0  # verifying the chains needs no key at all


@pytest.mark.django_db
def test_public_key_precedence(tenant: Any, tmp_path: Path, settings: Any) -> None:
    signing_key = settings.COHORT_AUDIT_SIGNING_KEY
    path = write_checkpoint(tmp_path)
    doc = json.loads(path.read_text())
    right = public_key_of(doc)
    wrong = public_key_of(signed_by_other_key(doc))
    key_file = tmp_path / "auditor.pub"
    key_file.write_text(right + "\n")
    settings.COHORT_AUDIT_SIGNING_KEY = ""  # a process without the private key
    settings.COHORT_AUDIT_PUBLIC_KEY = ""

    code, out = run("audit_verify", "--checkpoint", str(path))
    assert code == 2 and "no public key to verify the checkpoint with" in out and "--public-key" in out, out
    # --public-key: the auditor's own copy, as base64 or as a file
    for given in (right, str(key_file)):
        code, out = run("audit_verify", "--checkpoint", str(path), "--public-key", given, "--json")
        assert code == 0, out
        assert json.loads(out)["checkpoint"]["key_id"] == doc["key_id"]
    code, out = run("audit_verify", "--checkpoint", str(path), "--public-key", wrong)
    assert code == 2 and "signature does not verify with the trusted key" in out, out
    # COHORT_AUDIT_PUBLIC_KEY next; --public-key wins over it
    settings.COHORT_AUDIT_PUBLIC_KEY = right
    assert run("audit_verify", "--checkpoint", str(path))[0] == 0
    code, out = run("audit_verify", "--checkpoint", str(path), "--public-key", wrong)
    assert code == 2 and "signature does not verify" in out
    settings.COHORT_AUDIT_PUBLIC_KEY = wrong
    assert run("audit_verify", "--checkpoint", str(path), "--public-key", right)[0] == 0
    assert run("audit_verify", "--checkpoint", str(path))[0] == 2
    # last: derived from the private key where this process holds it (an explicit key still wins)
    settings.COHORT_AUDIT_PUBLIC_KEY = ""
    settings.COHORT_AUDIT_SIGNING_KEY = signing_key
    assert run("audit_verify", "--checkpoint", str(path))[0] == 0
    assert run("audit_verify", "--checkpoint", str(path), "--public-key", wrong)[0] == 2


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not base64!", "is not base64 of a 32-byte Ed25519 public key"),
        (base64.b64encode(b"short").decode(), "must be base64 of 32 bytes"),
        ("", "--public-key is empty"),
    ],
)
def test_bad_public_keys_are_bad_input(tenant: Any, tmp_path: Path, value: str, message: str) -> None:
    path = write_checkpoint(tmp_path)
    code, out = run("audit_verify", "--checkpoint", str(path), "--public-key", value)
    assert code == 2 and message in out, out


@pytest.mark.django_db
def test_public_key_needs_a_checkpoint(tenant: Any, tmp_path: Path) -> None:
    doc = json.loads(write_checkpoint(tmp_path).read_text())
    code, out = run("audit_verify", "--public-key", public_key_of(doc))
    assert code == 2 and "give --checkpoint FILE too" in out


def _subprocess_env() -> dict[str, str]:
    """The environment for a real ``manage.py`` process against this test database."""
    from tests.processes import child_env  # every alias, socket folder included (embedded mode)

    env = child_env(settings)
    env["COHORT_AUDIT_SIGNING_KEY"] = settings.COHORT_AUDIT_SIGNING_KEY
    return env


@pytest.mark.django_db(transaction=True)
def test_real_process_exit_codes(tenant: Any, tmp_path: Path) -> None:
    env = _subprocess_env()

    def manage(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    cp = tmp_path / "cp.json"
    done = manage("audit_checkpoint", "--out", str(cp))
    assert done.returncode == 0, done.stderr
    ok = manage("audit_verify", "--checkpoint", str(cp), "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["ok"] is True
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(signed_by_other_key(json.loads(cp.read_text()))))
    bad = manage("audit_verify", "--checkpoint", str(forged))
    assert bad.returncode == 2 and "signature does not verify" in bad.stderr
    assert manage("audit_verify", "--tenant", "nobody").returncode == 2
    # A process without the signing key (web, an auditor's shell) boots and verifies with the public key.
    public = json.loads(cp.read_text())["public_key"]
    env["COHORT_AUDIT_SIGNING_KEY"] = ""  # empty, not absent: config.settings.test would default it
    assert manage("check").returncode == 0
    unsigned = manage("audit_checkpoint")
    assert unsigned.returncode == 2 and "COHORT_AUDIT_SIGNING_KEY is not set" in unsigned.stderr
    no_key = manage("audit_verify", "--checkpoint", str(cp))
    assert no_key.returncode == 2 and "no public key to verify the checkpoint with" in no_key.stderr
    assert manage("audit_verify", "--checkpoint", str(cp), "--public-key", public).returncode == 0
    env["COHORT_AUDIT_PUBLIC_KEY"] = public
    assert manage("audit_verify", "--checkpoint", str(cp)).returncode == 0
