"""worker.webhooks without a network: the signature against the reference implementation of
Standard Webhooks (and the spec's own example), the backoff, and the pinned resolver."""

from __future__ import annotations

import socket
import uuid
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook

from worker.webhooks import BACKOFF_S, Delivery, PinnedResolver, body_of, retry_in_s, sign

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_sign__matches_the_reference_implementation_and_the_specs_example() -> None:
    body = b'{"test": 2432232314}'
    signature = sign(SECRET, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    reference = Webhook(SECRET).sign("msg_p5jXN8AQM9LWM0D4loKWxJek", datetime.fromtimestamp(1614265330, tz=UTC),
                                     body.decode())
    assert signature == reference == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_sign__a_delivery_verifies_with_its_headers_and_fails_when_tampered() -> None:
    delivery = Delivery(id=uuid.uuid4(), webhook_id=uuid.uuid4(), url="https://hooks.example.com/x", secret=SECRET,
                        event="task_failed", payload={"type": "task_failed", "data": {"title": "Größe ✓"}}, attempt=1)
    body = body_of(delivery)
    now = int(datetime.now(UTC).timestamp())
    headers = {"webhook-id": str(delivery.id), "webhook-timestamp": str(now),
               "webhook-signature": sign(SECRET, str(delivery.id), now, body)}
    assert Webhook(SECRET).verify(body, headers) == delivery.payload
    try:
        Webhook(SECRET).verify(body.replace("Größe".encode(), b"Grosse"), headers)
    except Exception as exc:  # the reference raises WebhookVerificationError
        assert "signature" in str(exc).lower()
    else:
        raise AssertionError("a tampered body verified")


def test_retry_in_s__grows_to_three_hours_and_scales_with_the_base() -> None:
    assert [retry_in_s(a, 5.0) for a in range(1, 9)] == [*BACKOFF_S, BACKOFF_S[-1]]
    assert retry_in_s(2, 0.5) == 3.0


async def test_pinned_resolver__answers_only_the_checked_addresses() -> None:
    answers = await PinnedResolver(["203.0.113.7", "2001:db8::1"]).resolve("hooks.example.com", 443)
    assert [(a["hostname"], a["host"], a["port"], a["family"]) for a in answers] == [
        ("hooks.example.com", "203.0.113.7", 443, socket.AF_INET),
        ("hooks.example.com", "2001:db8::1", 443, socket.AF_INET6)]
