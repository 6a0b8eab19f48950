"""REST channel: Rasa's contract, bad bodies, and a real server process (kill -9, Redis restart)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import _free_port

from assistant.dialogue.domain import Domain
from channels import rest
from channels.app import create_app
from core_fixtures import make_id

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def client(runtime):
    return create_app(runtime).test_client()


def test_webhook_follows_rasa_rest_contract(client):
    response = client.post("/webhooks/rest/webhook", json={"sender": "alice", "message": "你好"})
    assert response.status_code == 200
    body = response.get_json()
    assert isinstance(body, list) and body
    assert all(item["recipient_id"] == "alice" and isinstance(item["text"], str) for item in body)
    buttons = body[-1]["buttons"]
    assert all(set(b) == {"title", "payload"} for b in buttons)
    assert any(b["payload"] == "/request_human" for b in buttons)


def test_handoff_is_flagged_in_custom(client):
    body = client.post("/webhooks/rest/webhook", json={"sender": "bob", "message": "我要找人工"}).get_json()
    assert body[-1]["custom"]["handoff"] is True


def test_model_parse_is_shaped_like_rasa(client):
    body = client.post("/model/parse", json={"text": "明天中午订两份饭"}).get_json()
    assert body["intent"]["name"] == "book_meal"
    assert 0 < body["intent"]["confidence"] <= 1
    entities = {e["entity"]: e for e in body["entities"]}
    assert entities["quantity"]["value"] == 2
    assert {"start", "end", "extractor", "confidence_entity"} <= set(entities["quantity"])
    assert body["intent_ranking"][0]["name"] == "book_meal"


@pytest.mark.parametrize(
    ("kwargs", "status", "error"),
    [
        ({"data": "not json", "content_type": "text/plain"}, 415, "unsupported_media_type"),
        ({"data": "{broken", "content_type": "application/json"}, 400, "invalid_json"),
        ({"json": ["a", "list"]}, 400, "invalid_json"),
        ({"json": {"message": "你好"}}, 400, "invalid_sender"),
        ({"json": {"sender": "", "message": "你好"}}, 400, "invalid_sender"),
        ({"json": {"sender": "x" * 200, "message": "你好"}}, 400, "invalid_sender"),
        ({"json": {"sender": "a"}}, 400, "invalid_message"),
        ({"json": {"sender": "a", "message": 12}}, 400, "invalid_message"),
    ],
)
def test_bad_bodies_get_clear_json_errors(client, kwargs, status, error):
    response = client.post("/webhooks/rest/webhook", **kwargs)
    assert response.status_code == status
    assert response.get_json()["error"] == error


def test_wrong_method_and_unknown_path_are_json(client):
    assert client.get("/webhooks/rest/webhook").status_code == 405
    response = client.get("/nothing-here")
    assert response.status_code == 404 and response.get_json()["error"] == "not_found"


def test_emoji_only_and_odd_text_get_a_useful_answer(client):
    for message in ["🙂🙂🙂", "？？？", "\u0000\u200b", "ｌｎｚ"]:
        body = client.post("/webhooks/rest/webhook", json={"sender": "odd", "message": message}).get_json()
        assert body and "人工" in "".join(item["text"] for item in body) or body[0]["text"]


# -- a real server process --------------------------------------------------------------------------



def _post(port: int, sender: str, message: str) -> list[dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/webhooks/rest/webhook",
        json.dumps({"sender": sender, "message": message}).encode(),
        {"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


class Server:
    def __init__(self, env: dict[str, str]) -> None:
        self.port = _free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "assistant", "serve", "--port", str(self.port)],
            cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(self.process.stderr.read().decode())
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1)
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        raise RuntimeError("server did not start")

    def kill9(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


def _server_env(tmp_path: Path, model_dir: Path, **extra: str) -> dict[str, str]:
    return {"DATA_DIR": str(tmp_path / "var"), "MODEL_DIR": str(model_dir),
            "DATABASE_URL": f"sqlite:///{tmp_path / 'var' / 'server.db'}", **extra}


def test_real_server_submission_survives_kill_9(tmp_path, model_dir, nlu):
    env = _server_env(tmp_path, model_dir)
    server = Server(env)
    try:
        for text in ["办老年证", make_id("19450302"), "王建国", "13800138000"]:
            _post(server.port, "k9", text)
        reply = "".join(item["text"] for item in _post(server.port, "k9", "对"))
        reference = reply.split("受理编号")[1][:8]
    finally:
        server.kill9()
    restarted = Server(env)
    try:
        status = "".join(item["text"] for item in _post(restarted.port, "other", f"查一下受理编号{reference}"))
        assert reference in status and "已受理" in status
    finally:
        restarted.kill9()


def test_conversation_survives_server_restart_with_redis(tmp_path, model_dir, nlu, redis_server):
    env = _server_env(tmp_path, model_dir, REDIS_URL=redis_server.url)
    server = Server(env)
    id_number = make_id("19450302")
    try:
        _post(server.port, "r1", "办老年证")
        _post(server.port, "r1", id_number)
    finally:
        server.kill9()
    import redis

    client = redis.Redis.from_url(redis_server.url)
    keys = client.keys("*")
    stored = b"".join(v for k in keys if (v := client.get(k)) is not None)
    assert stored and id_number.encode() not in stored  # session state is SM4-sealed in Redis
    assert keys and not any(b"r1" in k for k in keys)  # and its keys are hashed: no sender id
    restarted = Server(env)
    try:
        reply = "".join(item["text"] for item in _post(restarted.port, "r1", "王建国"))
        assert "电话" in reply  # the form went on where it stopped: the next question is the phone
    finally:
        restarted.kill9()


def test_rest_refuses_to_start_without_its_too_long_sentence():
    doc = yaml.safe_load((ROOT / "domain.yml").read_text(encoding="utf-8"))
    del doc["responses"]["utter_message_too_long"]
    with pytest.raises(ValueError, match="utter_message_too_long"):
        rest.make_blueprint(SimpleNamespace(domain=Domain(doc), assistant=None))
