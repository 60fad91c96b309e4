"""Signing in: a Supabase access token verified the way the chat function verifies it.

The same checks as `supabase/functions/_shared/jwt.ts`: the signature against
the project's key set (asymmetric keys by `kid`, `oct` keys and the legacy
HS256 secret for HS256), `exp`, `aud = authenticated`, `role = authenticated`,
a UUID `sub`, and `iss` when configured. The verified token lives in an
HttpOnly, SameSite=Strict cookie and is checked again on every request; the
claims become `request.jwt.claims` of the user's transactions.
"""

from __future__ import annotations

import hmac
import json
import uuid
from dataclasses import dataclass
from typing import Any

import jwt

from worker.console.settings import ConsoleSettings

USER_COOKIE = "console_session"
OPERATOR_COOKIE = "console_operator"
ASYMMETRIC_ALGS = ["RS256", "ES256", "EdDSA", "PS256", "ES384", "RS384", "RS512"]


class TokenError(Exception):
    """A token that does not sign anyone in; `code` is the JSON error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class User:
    """A signed-in user: their id, e-mail (when the token has one), claims and the token itself."""

    id: uuid.UUID
    email: str | None
    claims: dict[str, Any]
    token: str


class TokenVerifier:
    """Verifies user access tokens with the project's keys; built once per process."""

    def __init__(self, settings: ConsoleSettings) -> None:
        self.issuer = settings.jwt_issuer
        self.hmac_keys: list[tuple[str | None, bytes]] = []
        self.asym: dict[str, Any] = {}
        self.jwks_client: jwt.PyJWKClient | None = None
        if settings.jwks is not None:
            for key in settings.jwks.get("keys", []):
                if key.get("kty") == "oct":
                    self.hmac_keys.append((key.get("kid"), jwt.utils.base64url_decode(key["k"])))
                else:
                    self.asym[key.get("kid", "")] = jwt.PyJWK(key).key
        elif settings.jwks_url:
            self.jwks_client = jwt.PyJWKClient(settings.jwks_url, cache_keys=True)
        if settings.jwt_secret:
            self.hmac_keys.append((None, settings.jwt_secret.encode()))

    def _keys(self, token: str) -> list[tuple[Any, list[str]]]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenError("invalid_token", "not a JWT") from exc
        alg = header.get("alg")
        if alg == "HS256":
            kid = header.get("kid")
            keys = [k for k_kid, k in self.hmac_keys if kid is None or k_kid in (None, kid)]
            return [(k, ["HS256"]) for k in keys]
        if alg in ASYMMETRIC_ALGS:
            if self.jwks_client is not None:
                try:
                    return [(self.jwks_client.get_signing_key_from_jwt(token).key, ASYMMETRIC_ALGS)]
                except jwt.PyJWTError as exc:
                    raise TokenError("invalid_token", "no key for this token") from exc
            key = self.asym.get(header.get("kid", ""))
            return [(key, ASYMMETRIC_ALGS)] if key is not None else []
        return []

    def verify(self, token: str) -> User:
        """The token's user, or TokenError (`invalid_token`, `token_expired`)."""
        keys = self._keys(token)
        if not keys:
            raise TokenError("invalid_token", "no key verifies this token")
        last: Exception | None = None
        for key, algs in keys:
            try:
                claims: dict[str, Any] = jwt.decode(
                    token, key, algorithms=algs, audience="authenticated", issuer=self.issuer,
                    options={"require": ["exp", "sub"]})
                break
            except jwt.ExpiredSignatureError as exc:
                raise TokenError("token_expired", "the token has expired: sign in again") from exc
            except jwt.PyJWTError as exc:
                last = exc
        else:
            raise TokenError("invalid_token", f"invalid token ({type(last).__name__})")
        if claims.get("role") != "authenticated":
            raise TokenError("invalid_token", "not a user token (role must be authenticated)")
        try:
            uid = uuid.UUID(str(claims["sub"]))
        except ValueError as exc:
            raise TokenError("invalid_token", "sub is not a user id") from exc
        return User(id=uid, email=claims.get("email"), claims=claims, token=token)


def claims_json(user: User) -> str:
    """The claims as PostgREST puts them in request.jwt.claims."""
    return json.dumps(user.claims)


def operator_ok(settings: ConsoleSettings, presented: str | None) -> bool:
    """True when operator pages are configured and `presented` is the operator token (constant time)."""
    if not settings.operator_token or not presented:
        return False
    return hmac.compare_digest(settings.operator_token.encode(), presented.encode())
