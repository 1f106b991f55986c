"""Bearer JWTs: minting, verifying, and the two scopes (``admin`` implies ``read``)."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Final, Literal

import jwt
import msgspec

from flashmm.api._errors import ApiError

__all__ = [
    "SCOPES",
    "Algorithm",
    "InsecureSecret",
    "Principal",
    "Scope",
    "TokenVerifier",
    "check_secret",
    "mint_token",
]

Scope = Literal["read", "admin"]
SCOPES: tuple[Scope, ...] = ("read", "admin")
Algorithm = Literal["HS256", "HS384", "HS512"]

# RFC 7518 section 3.2: an HMAC key at least as long as the hash output.
_MIN_SECRET_BYTES: dict[str, int] = {"HS256": 32, "HS384": 48, "HS512": 64}
_REQUIRED_CLAIMS = ["exp", "iat", "sub", "scope"]
_BEARER_CHALLENGE = {"WWW-Authenticate": "Bearer"}
VERIFIED_CACHE_SIZE: Final = 1024
"""Verified tokens remembered (until their expiry) so a client's next request skips the HMAC."""


class InsecureSecret(ValueError):
    """The JWT secret is missing or too short to sign tokens safely."""


class Principal(msgspec.Struct, frozen=True):
    """Who a verified token speaks for."""

    subject: str
    scope: Scope

    def allows(self, scope: Scope) -> bool:
        return self.scope == "admin" or scope == self.scope


def check_secret(secret: str, algorithm: Algorithm) -> None:
    """Raise :class:`InsecureSecret` unless ``secret`` is long enough for ``algorithm``."""
    needed = _MIN_SECRET_BYTES[algorithm]
    if not secret:
        raise InsecureSecret(
            "no JWT secret: set FLASHMM_API__JWT_SECRET (or api.jwt_secret) to a random string "
            f"of at least {needed} bytes, e.g. the output of "
            "`python -c 'import secrets; print(secrets.token_urlsafe(48))'`"
        )
    if len(secret.encode()) < needed:
        raise InsecureSecret(
            f"the JWT secret is {len(secret.encode())} bytes; {algorithm} needs at least "
            f"{needed}: set FLASHMM_API__JWT_SECRET to a longer random string"
        )


def mint_token(
    secret: str,
    scope: Scope,
    subject: str = "operator",
    ttl_s: int = 3600,
    algorithm: Algorithm = "HS256",
) -> str:
    """A signed token for ``subject`` with ``scope`` that expires ``ttl_s`` seconds from now."""
    check_secret(secret, algorithm)
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    if not ttl_s > 0:
        raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
    if not subject:
        raise ValueError("subject must not be empty")
    now = int(time.time())
    claims = {"sub": subject, "scope": scope, "iat": now, "exp": now + int(ttl_s)}
    return jwt.encode(claims, secret, algorithm=algorithm)


def _unauthorized(code: str, message: str) -> ApiError:
    return ApiError(401, code, message, headers=_BEARER_CHALLENGE)


class TokenVerifier:
    """Checks ``Authorization: Bearer`` values against one secret and algorithm.

    A token that verified is remembered, with its ``exp``, in a bounded LRU: until it
    expires it stands for the same principal (the secret cannot change under a running
    verifier), so checking its signature again would only cost time.
    """

    def __init__(
        self, secret: str, algorithm: Algorithm, cache_size: int = VERIFIED_CACHE_SIZE
    ) -> None:
        check_secret(secret, algorithm)
        self._secret = secret
        self._algorithm = algorithm
        self._cache_size = cache_size
        self._verified: OrderedDict[str, tuple[Principal, float]] = OrderedDict()

    def from_header(self, header: str | None) -> Principal:
        """The principal of an ``Authorization`` header value; 401 with the reason if none."""
        if not header:
            raise _unauthorized(
                "AUTH_MISSING", "this endpoint needs 'Authorization: Bearer <token>'"
            )
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized(
                "TOKEN_MALFORMED", "the Authorization header must be 'Bearer <token>'"
            )
        return self.verify(token.strip())

    def known(self, token: str) -> Principal | None:
        """The principal of a token verified before and not expired since, else None."""
        found = self._verified.get(token)
        if found is None or time.time() >= found[1]:
            return None
        return found[0]

    def verify(self, token: str) -> Principal:
        """The principal of a raw token; 401 saying why it is refused."""
        known = self._verified.get(token)
        if known is not None:
            principal, expires = known
            if time.time() < expires:
                self._verified.move_to_end(token)
                return principal
            del self._verified[token]  # expired: the full check below says so
        principal, expires = self._check(token)
        self._verified[token] = (principal, expires)
        if len(self._verified) > self._cache_size:
            self._verified.popitem(last=False)
        return principal

    def _check(self, token: str) -> tuple[Principal, float]:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[self._algorithm],
                options={"require": _REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError:
            raise _unauthorized(
                "TOKEN_EXPIRED", "the token has expired: mint a new one (flashmm token)"
            ) from None
        except jwt.InvalidSignatureError:
            raise _unauthorized(
                "TOKEN_BAD_SIGNATURE",
                "the token's signature does not match this server's secret",
            ) from None
        except jwt.InvalidAlgorithmError:
            raise _unauthorized(
                "TOKEN_BAD_ALGORITHM", f"the token must be signed with {self._algorithm}"
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            raise _unauthorized(
                "TOKEN_INVALID", f"the token lacks the {exc.claim!r} claim"
            ) from None
        except jwt.DecodeError:
            raise _unauthorized("TOKEN_MALFORMED", "the token is not a well-formed JWT") from None
        except jwt.InvalidTokenError as exc:
            raise _unauthorized("TOKEN_INVALID", f"the token is not valid: {exc}") from None
        scope, subject = claims.get("scope"), claims.get("sub")
        if scope not in SCOPES or not isinstance(subject, str) or not subject:
            raise _unauthorized(
                "TOKEN_INVALID",
                f"the token's scope must be one of {', '.join(SCOPES)} and its subject a "
                "non-empty string",
            )
        # PyJWT refuses a token once now >= int(exp); the cache must not outlive that
        return Principal(subject=subject, scope=scope), float(int(claims["exp"]))

    @staticmethod
    def require(principal: Principal, scope: Scope) -> None:
        """403 unless ``principal`` may act with ``scope``."""
        if not principal.allows(scope):
            raise ApiError(
                403,
                "INSUFFICIENT_SCOPE",
                f"this endpoint needs the {scope!r} scope; the token has {principal.scope!r}",
                {"required_scope": scope, "token_scope": principal.scope},
            )
