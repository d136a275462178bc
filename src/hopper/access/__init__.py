"""Who may do what: bearer tokens with scopes (optionally bound to schools), and web users."""

from hopper.access.authenticator import Authenticator, bearer_from_subprotocols
from hopper.access.throttle import LoginThrottle
from hopper.access.tokens import (
    OPEN_PRINCIPAL,
    AuthError,
    IssuedToken,
    Principal,
    Scope,
    create_token,
    issue_token,
)
from hopper.access.users import Role, Session, User, UserError, UserStore

__all__ = [
    "OPEN_PRINCIPAL",
    "AuthError",
    "Authenticator",
    "IssuedToken",
    "LoginThrottle",
    "Principal",
    "Role",
    "Scope",
    "Session",
    "User",
    "UserError",
    "UserStore",
    "bearer_from_subprotocols",
    "create_token",
    "issue_token",
]
