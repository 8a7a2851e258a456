"""The audit log: hash-chained lines (an edited or removed line is found by `herd audit verify`),
rotation and retention, admin actions with who did them, and text only for named tenants."""

import json
import os
import time

import yaml
from gwtools import chat, fast_config

from herd.cli import main as herd
from herd.gateway.audit import GENESIS, AuditLog, line_hash, verify
from herd.gateway.auth import hash_key
from herd.gateway.config import AuditConfig
from waiting import until

ADMIN = {"Authorization": "Bearer adm"}


async def write_log(path, n: int, **config) -> AuditLog:
    log = AuditLog(AuditConfig(path=str(path), **config))
    log.start()
    for i in range(n):
        await log.record(request_id=f"r{i}", tenant="t", status=200)
    await log.stop()
    return log


async def test_each_line_carries_the_hash_of_the_one_before(tmp_path, capsys):
    path = tmp_path / "audit.jsonl"
    await write_log(path, 3)
    await write_log(path, 2)  # a restart continues the chain
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["prev"] == GENESIS
    for before, line in zip(lines, lines[1:], strict=False):
        assert json.loads(line)["prev"] == line_hash(before)
    assert verify([path]) == []
    assert herd(["audit", "verify", str(path)]) == 0
    assert "intact" in capsys.readouterr().out


async def test_an_edited_or_removed_line_is_detected(tmp_path, capsys):
    path = tmp_path / "audit.jsonl"
    await write_log(path, 5)
    lines = path.read_text().splitlines()
    edited = lines.copy()
    edited[2] = edited[2].replace('"status": 200', '"status": 201')
    path.write_text("\n".join(edited) + "\n")
    problems = verify([path])
    assert len(problems) == 1 and f"{path}:4" in problems[0] and f"{path}:3" in problems[0]
    path.write_text("\n".join(lines[:1] + lines[2:]) + "\n")  # line 2 removed
    assert len(verify([path])) == 1
    assert herd(["audit", "verify", str(path)]) == 1
    assert "was removed" in capsys.readouterr().out


def lines(folder, prefix: str = "r") -> int:
    """Audit lines of requests whose id starts with `prefix`, across every file."""
    return sum(
        1
        for p in folder.glob("audit.jsonl*")
        for line in p.read_text().splitlines()
        if f'"request_id": "{prefix}' in line or f'"request_id":"{prefix}' in line
    )


async def test_rotation_by_size_keeps_the_chain_and_retention_deletes_old_files(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(AuditConfig(path=str(path), max_bytes=400, retention_days=1.0))
    log.start()
    for i in range(12):
        await log.record(request_id=f"r{i}", tenant="t", status=200)
        # one line at a time (each write may rotate): wait until this one is on disk
        await until(lambda n=i + 1: lines(tmp_path) == n, 5, "the line written")
    await log.stop()
    rotated = sorted(tmp_path.glob("audit.jsonl.*"))
    assert len(rotated) >= 2 and all(p.stat().st_size <= 400 for p in rotated)
    assert verify([*rotated, path]) == []  # one chain through every file
    total = sum(len(p.read_text().splitlines()) for p in [*rotated, path])
    assert total == 12
    # Files past the retention go at the next rotation.
    old = time.time() - 2 * 86_400
    os.utime(rotated[0], (old, old))
    log = AuditLog(AuditConfig(path=str(path), max_bytes=400, retention_days=1.0))
    log.start()
    for i in range(6):
        await log.record(request_id=f"s{i}", tenant="t", status=200)
        await until(lambda n=i + 1: lines(tmp_path, "s") == n, 5, "the line written")
    await log.stop()
    assert not rotated[0].exists() and rotated[1].exists()


async def test_text_only_for_named_tenants_in_its_own_file(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(AuditConfig(path=str(path), text_tenants=["keep"], text_retention_days=1.0))
    log.start()
    await log.record(request_id="a", tenant="keep", prompt="hello", completion="world")
    await log.record(request_id="b", tenant="other", prompt="secret", completion="stuff")
    await log.stop()
    assert "hello" not in path.read_text() and "secret" not in path.read_text()
    (text_file,) = tmp_path.glob("audit.text.jsonl.*")
    records = [json.loads(line) for line in text_file.read_text().splitlines()]
    assert [(r["request_id"], r["prompt"], r["completion"]) for r in records] == [
        ("a", "hello", "world")
    ]
    old = time.time() - 2 * 86_400
    os.utime(text_file, (old, old))
    log.start()
    await log.record(request_id="c", tenant="keep", prompt="again", completion="x")
    await log.stop()
    assert text_file.exists()  # today's file, rewritten just now: kept
    os.utime(text_file, (old, old))
    stale = text_file.with_name("audit.text.jsonl.2000-01-01")
    text_file.rename(stale)
    log.start()
    await log.record(request_id="d", tenant="keep", prompt="later", completion="y")
    await log.stop()
    assert not stale.exists()  # past its own retention


async def test_admin_actions_are_audited_with_who_did_them(fakes, start_gateway, tmp_path):
    keys = tmp_path / "keys.yaml"
    keys.write_text(yaml.safe_dump({"keys": [{"id": "a", "sha256": hash_key("sk-a")}]}))
    audit = tmp_path / "audit.jsonl"
    config = fast_config(
        [fakes[0].url], api_keys=str(keys), admin_key="adm", audit__path=str(audit)
    )
    gw = await start_gateway(config)
    assert (await gw.post("/admin/deny", {"key": "a"}, ADMIN))[0] == 201
    keys.write_text(yaml.safe_dump({"keys": [{"id": "b", "sha256": hash_key("sk-b")}]}))
    status, _, body = await gw.post("/admin/keys/reload", None, ADMIN)
    assert status == 200 and json.loads(body)["keys"] == 1
    assert (await gw.post("/v1/chat/completions", chat(), {"Authorization": "Bearer sk-b"}))[
        0
    ] == 200
    assert (await gw.post("/admin/replicas", {"url": "ftp://x"}, ADMIN))[0] == 400
    await gw.gateway.audit.stop()
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    admin = [r for r in records if r["event"] == "admin"]
    assert [(r["action"], r["status"]) for r in admin] == [
        ("POST /admin/deny", 201),
        ("POST /admin/keys/reload", 200),
        ("POST /admin/replicas", 400),
    ]
    assert all(r["admin"] == "admin:" + hash_key("adm")[:8] for r in admin)
    assert admin[0]["body"] == {"key": "a"}
    assert 'adm"' not in audit.read_text()  # the key itself never
    assert verify([audit]) == []
