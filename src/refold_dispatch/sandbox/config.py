"""The sandbox's configuration: what it accepts, how hard it limits, which faults it plays.

Built from keyword arguments (``SandboxConfig(api_key="tk_x", rate_limit=5, faults=FaultConfig(...))``), so a
CLI maps its flags one to one. Immutable: the admin endpoints change the live configuration by validating a
whole new object, so a request handler never sees a half-applied change.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from refold_dispatch.sandbox.faults import FaultConfig

# A test-environment key (``tk`` prefix), so accounts report ``environment: "test"`` as they would on Refold.
DEFAULT_API_KEY = "tk_sandbox_key"
# Events a demo or test is likely to send; ``"*"`` in the set accepts any event name.
DEFAULT_KNOWN_EVENTS: frozenset[str] = frozenset(
    {
        "order.created",
        "order.shipped",
        "invoice.paid",
        "user.signed_up",
        "user.updated",
        "ticket.opened",
        "demo.event",
    }
)
ANY_EVENT = "*"
# The only published numbers for Refold's limit: 20 events per second, burst of 5, per API key.
DEFAULT_RATE_LIMIT = 20.0
DEFAULT_RATE_BURST = 5
# One of the lifetimes Refold's docs give for session tokens (24 h); clients must trust ``expires_in``.
DEFAULT_TOKEN_TTL_SECONDS = 24 * 3600
DEFAULT_REFRESH_TOKEN_TTL_SECONDS = 7 * 24 * 3600
# About 300 MB at worst: enough for a long benchmark, bounded so a forgotten sandbox cannot eat the machine.
DEFAULT_MAX_RECORDED = 1_000_000
# A fixed, ObjectId-shaped org id: accounts look like Refold's and stay stable across restarts.
DEFAULT_ORG_ID = "5f0c0ffee0ddba11ca5eba5e"


class SandboxConfig(BaseModel):
    """Everything the sandbox server can be told. Every field has a working default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    api_key: Annotated[str, Field(min_length=1, repr=False)] = DEFAULT_API_KEY
    known_events: frozenset[str] = DEFAULT_KNOWN_EVENTS
    require_known_accounts: bool = True
    rate_limit: Annotated[float, Field(gt=0.0)] = DEFAULT_RATE_LIMIT
    rate_burst: Annotated[int, Field(ge=1)] = DEFAULT_RATE_BURST
    rate_limit_enabled: bool = True
    retry_after_header: bool = True
    token_ttl_seconds: Annotated[int, Field(ge=0)] = DEFAULT_TOKEN_TTL_SECONDS
    refresh_token_ttl_seconds: Annotated[int, Field(ge=0)] = DEFAULT_REFRESH_TOKEN_TTL_SECONDS
    max_recorded: Annotated[int, Field(ge=1)] = DEFAULT_MAX_RECORDED
    org_id: str = DEFAULT_ORG_ID
    faults: FaultConfig = FaultConfig()

    @property
    def environment(self) -> str:
        """Refold derives the environment from the key: ``pk`` keys are production, the rest test."""
        return "production" if self.api_key.startswith("pk") else "test"

    def accepts_event(self, event: str) -> bool:
        """Whether an event name is defined (in the sandbox's stand-in for Refold's dashboard)."""
        return event in self.known_events or ANY_EVENT in self.known_events
