"""API settings, read from the environment (never from the repository)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="UNS_", extra="ignore")

    api_token: SecretStr = Field(min_length=16, description="bearer token every request must carry")
    max_interval_days: int = Field(default=31, ge=1, le=366)
