"""Delivery's settings: GitHub Actions' way in (the repository, its CodeStar connection, the OIDC provider)."""

from __future__ import annotations

from pydantic import Field

from components.platform import (
    PlatformSettings,
)


class DeliverySettings(PlatformSettings):
    """GitHub Actions' way in: the repository, its CodeStar connection, the OIDC provider."""

    github_repository: str = Field(
        default="", pattern=r"^$|^[A-Za-z0-9][A-Za-z0-9-]{0,38}/[A-Za-z0-9._-]{1,100}$|"
                            r"^[A-Za-z0-9][A-Za-z0-9-]{0,38}@[0-9]+/[A-Za-z0-9._-]{1,100}@[0-9]+$",
        description="The GitHub repository whose workflows preview and deploy this stack (target=aws), as its OIDC "
                    "tokens name it: `owner/name`, or `owner@<owner id>/name@<repository id>` for a repository on "
                    "GitHub's immutable subject claims (created, renamed or transferred from 15 July 2026, or opted "
                    "in). The stack then "
                    "creates the roles the workflows assume and CodeBuild-hosted runners in its private subnets. "
                    "Empty: neither.")
    github_connection_arn: str = Field(
        default="", pattern=r"^$|^arn:aws[a-z-]*:(codeconnections|codestar-connections):[a-z0-9-]+:\d{12}:connection/[0-9a-f-]+$",
        description="An AWS CodeConnections connection to GitHub in the stack's region, its GitHub App installed on "
                    "githubRepository: the runners register through it. Required with githubRepository.")
    github_oidc_provider_arn: str = Field(
        default="", pattern=r"^$|^arn:aws[a-z-]*:iam::\d{12}:oidc-provider/token\.actions\.githubusercontent\.com$",
        description="The account's IAM OIDC provider for GitHub Actions, when another stack or tool made it (an "
                    "account has one per URL); empty: this stack creates it, and keeps it on destroy.")
