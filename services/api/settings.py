"""API settings, read from the environment (never from the repository)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="UNS_", extra="ignore")

    api_token: SecretStr = Field(min_length=16, description="the admin's bearer token: may do everything")
    # one token per role (optional): each role may read; writes are checked per route (services/api/deps.py)
    api_token_viewer: SecretStr | None = Field(default=None, min_length=16)
    api_token_operator: SecretStr | None = Field(default=None, min_length=16)
    api_token_planner: SecretStr | None = Field(default=None, min_length=16)
    api_token_quality: SecretStr | None = Field(default=None, min_length=16)
    max_interval_days: int = Field(default=31, ge=1, le=366)
    # exports (services/api/exports.py) are streamed: a year of the record is one request
    max_export_days: int = Field(default=366, ge=1, le=3660)
    command_timeout_s: float = Field(default=5.0, gt=0, le=60)
    # bounded writes: a larger body, or a dispatch list with more operations, is answered 413
    max_body_bytes: int = Field(default=1_048_576, ge=1024, le=64 * 1_048_576)
    max_rows: int = Field(default=2_000, ge=1, le=10_000)  # operations in one dispatch request

    def tokens(self) -> dict[str, SecretStr]:
        """Role -> token, for the roles that have one."""
        given = {
            "admin": self.api_token,
            "viewer": self.api_token_viewer,
            "operator": self.api_token_operator,
            "planner": self.api_token_planner,
            "quality": self.api_token_quality,
        }
        return {role: token for role, token in given.items() if token is not None}
