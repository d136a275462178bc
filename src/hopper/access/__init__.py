"""Who may do what: bearer tokens with scopes, optionally bound to schools."""

from hopper.access.authenticator import Authenticator, bearer_from_subprotocols
from hopper.access.tokens import (
    OPEN_PRINCIPAL,
    AuthError,
    IssuedToken,
    Principal,
    Scope,
    create_token,
    issue_token,
)

__all__ = [
    "OPEN_PRINCIPAL",
    "AuthError",
    "Authenticator",
    "IssuedToken",
    "Principal",
    "Scope",
    "bearer_from_subprotocols",
    "create_token",
    "issue_token",
]
